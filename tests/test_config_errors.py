"""A wrong --config.* override is one `error:` line and exit status 2, never a traceback."""

import subprocess
import sys

import pytest

from configs import demo
from skinjax.runtime import cli_flags
from tests.helpers import REPO


def run(*args):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=300)


def assert_one_error_line(result, *expected):
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  for text in expected:
    assert text in lines[0]


@pytest.mark.parametrize('override, expected', [
    ('train.no_such_key=3', ['unknown config key train.no_such_key', 'train has ', 'batch_size']),
    ('train.batch_sise=3', ['unknown config key train.batch_sise (did you mean train.batch_size']),
    ('train.image_size=3', ['unknown config key train.image_size (did you mean data.image_size']),
    ('trian.batch_size=3', ['unknown config key trian in trian.batch_size (did you mean train?)']),
    ('train.batch_size=abc', ['--config.train.batch_size=abc', 'invalid literal for int()']),
])
def test_main_bad_override_is_one_line(tmp_path, override, expected):
  workdir = tmp_path / 'w'
  result = run('-m', 'skinjax.main', '--config=configs/demo.py', f'--workdir={workdir}',
               f'--config.{override}')
  assert_one_error_line(result, *expected)
  assert not workdir.exists()


def test_main_missing_config_file_with_an_override_is_one_line(tmp_path):
  result = run('-m', 'skinjax.main', '--config=configs/no_such_config.py',
               f'--workdir={tmp_path / "w"}', '--config.train.batch_size=8')
  assert_one_error_line(result, 'configs/no_such_config.py', 'No such file')


@pytest.mark.parametrize('override, expected', [
    ('train.no_such_key=3', 'unknown config key train.no_such_key'),
    ('train.batch_size=abc', '--config.train.batch_size=abc'),
])
def test_study_bad_override_is_one_line_before_any_run(tmp_path, override, expected):
  out = tmp_path / 'study'
  result = run('scripts/run_study.py', f'--out={out}', '--configs=configs/demo.py',
               '--override', 'train.num_epochs=1', '--override', override)
  assert_one_error_line(result, expected)
  assert result.stdout == '' and not out.exists()


def test_unknown_key_names_the_first_missing_key_only():
  config = demo.get_config()
  assert cli_flags.unknown_key(config, 'train.batch_size') is None
  assert cli_flags.unknown_key(config, 'data.split_fractions[0]') is None  # an index: not a key
  assert cli_flags.unknown_key(config, 'data.augment.hfilp') == (
      'unknown config key data.augment.hfilp (did you mean data.augment.hflip or '
      'data.augment.vflip?)')
  assert cli_flags.unknown_key(config, 'nope').startswith(
      'unknown config key nope (no close match; the config has data, eval, model, seed, train')
