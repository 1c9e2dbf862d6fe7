"""Unreadable images given to evaluate.py and predict.py: named in one line, or skipped and listed.

Each kind of bad file is checked against the evaluation pipeline's own decoding, which is what
would otherwise fail on it, deep inside a pipeline thread.
"""

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from skinjax.data import pipeline
from skinjax.data.constants import CLASS_NAMES
from skinjax.evaluation import checkpoint_eval
from skinjax.evaluation import external
from skinjax.evaluation import inference
from tests.test_evaluation_scripts import script
from tests.test_external import write_ham_csv, write_jpegs

FIX = 'replace or remove it, or pass --skip_bad_images.'


def encoded(image_format: str, seed: int = 0) -> bytes:
  rng = np.random.default_rng(seed)
  out = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(out, image_format)
  return out.getvalue()


# name: (the bytes, the reason given, or None for PIL's own message). The truncated files keep a
# valid header: only decoding them shows that they are bad.
BAD_FILES = {
    'truncated.jpg': (encoded('JPEG')[:-300], None),
    'empty.jpg': (b'', 'the file is empty'),
    'notes.jpg': (b'lesion photos to follow\n',
                  'not a JPEG, PNG or other image format PIL decodes'),
    'cut.png': (encoded('PNG')[:4000], None),
}


def pipeline_error(data: bytes) -> Exception:
  """What the evaluation pipeline raises on decoding `data`."""
  with pytest.raises((OSError, SyntaxError)) as error:
    pipeline.EvalView(24)(data)
  return error.value


def reason(name: str) -> str:
  data, given = BAD_FILES[name]
  return given or str(pipeline_error(data))


def write_bad(folder, name):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / name).write_bytes(BAD_FILES[name][0])
  return folder / name


@pytest.fixture(scope='module')
def run(tiny_run):
  return inference.load_run(tiny_run[0], 'best')


@pytest.mark.parametrize('name', BAD_FILES)
def test_an_unreadable_image_is_named_in_one_line(tmp_path, name):
  write_jpegs(tmp_path, ['good'])
  bad = write_bad(tmp_path, name)
  pipeline.EvalView(24)((tmp_path / 'good.jpg').read_bytes())
  if name in ('truncated.jpg', 'cut.png'):  # what the check adds: the header alone looks fine
    with Image.open(bad) as image:
      assert image.size == (64, 48)
  pipeline_error(bad.read_bytes())  # fails unless the pipeline's decoding fails too
  with pytest.raises(external.ExternalDataError) as error:
    external.check_readable([tmp_path / 'good.jpg', bad])
  assert str(error.value) == f'Cannot read {bad} as an image ({reason(name)}); {FIX}'


def test_skip_bad_images_keeps_the_readable_ones_and_names_the_others(tmp_path):
  write_jpegs(tmp_path, ['a', 'b'])
  bad = [write_bad(tmp_path, name) for name in BAD_FILES]
  paths = [tmp_path / 'a.jpg', *bad, tmp_path / 'b.jpg']
  readable, skipped = external.check_readable(paths, skip_bad_images=True)
  np.testing.assert_array_equal(readable, [True, False, False, False, False, True])
  assert skipped == [{'image': str(path), 'reason': reason(path.name)} for path in bad]
  with pytest.raises(external.ExternalDataError, match=r'None of the 4 images can be read'):
    external.check_readable(bad, skip_bad_images=True)


def test_external_set_leaves_unreadable_images_out_of_the_scored_set(run, tmp_path):
  ids = [f'ISIC_{i:07d}' for i in range(7)]
  write_jpegs(tmp_path / 'images', ids[:5])
  (tmp_path / 'images' / f'{ids[5]}.jpg').write_bytes(BAD_FILES['truncated.jpg'][0])
  (tmp_path / 'images' / f'{ids[6]}.jpg').write_bytes(b'')
  write_ham_csv(tmp_path / 'labels.csv', ids, CLASS_NAMES, lesions=[f'L{i}' for i in range(7)])
  with pytest.raises(external.ExternalDataError, match=f'Cannot read .*{ids[5]}.jpg as an image'):
    checkpoint_eval.external_set(tmp_path / 'images', tmp_path / 'labels.csv', run)
  data = checkpoint_eval.external_set(tmp_path / 'images', tmp_path / 'labels.csv', run,
                                      skip_bad_images=True)
  assert list(data.image_ids) == ids[:5] and list(data.groups) == [f'L{i}' for i in range(5)]
  np.testing.assert_array_equal(data.labels, np.arange(5))
  assert len(data.source) == len(data.indices) == 5
  assert [s['image'] for s in data.description['skipped_images']] == [
      str(tmp_path / 'images' / f'{image_id}.jpg') for image_id in ids[5:]]


def test_an_image_spoilt_after_its_check_is_named_too(run, tmp_path):
  write_jpegs(tmp_path, ['a', 'b', 'c'])
  paths = [tmp_path / f'{name}.jpg' for name in 'abc']
  external.check_readable(paths)
  source = external.ImageFiles(paths)
  paths[1].write_bytes(BAD_FILES['truncated.jpg'][0])
  message = f'Cannot read {paths[1]} as an image'
  with pytest.raises(external.ExternalDataError, match=message):
    inference.predict_source(run, source, np.arange(3))
  with pytest.raises(external.ExternalDataError, match=message):
    inference.eval_view(run, source, 1)


def with_validated_tta(workdir, mode):
  """The run as if its recipe had been validated with TTA `mode`."""
  saved = json.loads((workdir / 'config.json').read_text())
  saved.setdefault('eval', {})['validated_tta'] = mode
  (workdir / 'config.json').write_text(json.dumps(saved))


TTA_WARNING = ("warning: --tta=none, but this run's recipe was validated with --tta=flip; its "
               'published figures are for flip.')


def test_evaluate_skips_bad_images_and_warns_of_an_unvalidated_tta(copy_of_tiny_run, tmp_path,
                                                                  python):
  with_validated_tta(copy_of_tiny_run, 'flip')
  ids = [f'ISIC_{i:07d}' for i in range(9)]
  write_jpegs(tmp_path / 'images', ids[:7])
  for image_id, name in zip(ids[7:], ('truncated.jpg', 'notes.jpg')):
    (tmp_path / 'images' / f'{image_id}.jpg').write_bytes(BAD_FILES[name][0])
  dx = [CLASS_NAMES[i % 7] for i in range(9)]
  write_ham_csv(tmp_path / 'labels.csv', ids, dx)
  out = tmp_path / 'out'
  result = script(python, 'evaluate.py', f'--workdir={copy_of_tiny_run}',
                  f'--images_dir={tmp_path / "images"}',
                  f'--labels_csv={tmp_path / "labels.csv"}', f'--out={out}', '--skip_bad_images')
  assert result.returncode == 0, result.stderr
  assert TTA_WARNING in result.stderr.splitlines()
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['warnings'] == [TTA_WARNING] and metrics['num_examples'] == 7
  skipped = [{'image': str(tmp_path / 'images' / f'{image_id}.jpg'), 'reason': reason(name)}
             for image_id, name in zip(ids[7:], ('truncated.jpg', 'notes.jpg'))]
  assert metrics['skipped_images'] == skipped
  assert result.stdout.splitlines()[-1] == (
      f'Skipped 2 unreadable images, left out of the scores: {ids[7]}.jpg '
      f'({reason("truncated.jpg")}), {ids[8]}.jpg ({reason("notes.jpg")}); all listed '
      f'in {out / "metrics.json"} (skipped_images).')


def test_predict_skips_bad_images_names_them_and_captions_gradcam(copy_of_tiny_run, tmp_path,
                                                                 python):
  with_validated_tta(copy_of_tiny_run, 'flip')
  write_jpegs(tmp_path / 'images', ['a', 'b'])
  bad = [write_bad(tmp_path / 'images', name) for name in ('empty.jpg', 'cut.png')]
  result = script(python, 'predict.py', f'--workdir={copy_of_tiny_run}', '--json',
                  '--skip_bad_images', f'--gradcam={tmp_path / "cams"}', tmp_path / 'images')
  assert result.returncode == 0, result.stderr
  records = [json.loads(line) for line in result.stdout.splitlines()]
  predicted = {r['image']: r for r in records if 'error' not in r}
  assert sorted(predicted) == [str(tmp_path / 'images' / f'{name}.jpg') for name in 'ab']
  errors = [{'image': str(path), 'error': reason(path.name)} for path in sorted(bad)]
  assert [r for r in records if 'error' in r] == errors
  stderr = result.stderr.splitlines()
  assert TTA_WARNING in stderr and 'Traceback' not in result.stderr
  for error in errors:
    assert (f'Skipped {error["image"]}: cannot read it as an image ({error["error"]}).'
            in stderr)
  for record in predicted.values():
    with Image.open(record['gradcam']) as figure:
      assert figure.mode == 'RGB' and figure.size[0] > figure.size[1] >= 256
