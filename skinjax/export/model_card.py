"""model_card.json and MODEL_CARD.md: what an exported model is, expects and scored.

Everything comes from the run's workdir: W/config.json (classes, input, training config, the
dataset's fingerprint), W/report/metrics.json (the trainer's test report of its best checkpoint)
and W/eval/*/metrics.json (evaluate.py's splits and external sets), keeping only the results of
the exported checkpoint's step.
"""

import json
import pathlib

from skinjax.data import augment
from skinjax.models import registry

CARD_FILE = 'model_card.json'
CARD_MARKDOWN = 'MODEL_CARD.md'

NOT_A_MEDICAL_DEVICE = (
    'Research use only. This model is not a medical device: it has not been cleared or approved '
    'by any regulator, and it must not be used to diagnose, treat or decide the care of anyone.')

# The licences of the data the prepare formats read, as the datasets publish them. The weights a
# model learns from the data are shared under the data's terms.
DATA_LICENCES = {
    'ham10000': 'CC BY-NC-SA 4.0 (HAM10000, Tschandl et al. 2018, Harvard Dataverse)',
    'isic2019': 'CC BY-NC 4.0 (ISIC 2019 Challenge training data)',
    'isic2020': 'CC BY-NC 4.0 (ISIC 2020 Challenge training data)',
    'isic_archive': "each image's own licence in the ISIC Archive (CC-0, CC BY or CC BY-NC)",
}
UNKNOWN_LICENCE = 'not recorded by skinjax: the terms of the data it was trained on apply'

# skinjax.data.augment.to_pil, shrink_to_short_side and eval_resize, in words: what a deployer's
# code must do (resize_rule puts them together).
_DECODE = "JPEGs are decoded with PIL's Image.draft('RGB', ({size}, {size})) first. "
_SHRINK = ('An image whose shorter side is longer than {side} px (the training images\' median) '
           "is then resized with PIL's bilinear filter so that its shorter side is {side} "
           '(rounded, aspect kept). ')
RESIZE_RULES = {
    'center_crop': ('Take the central square (its side the shorter side) and resize it '
                    "to {size}x{size} with PIL's bilinear filter: image.resize(({size}, "
                    '{size}), Image.BILINEAR, box=square).'),
    'squash': ("Resize the whole image to {size}x{size} with PIL's bilinear filter, "
               'changing its aspect ratio.'),
}

# The figures a card shows of each scored set, in this order.
HEADLINE_METRICS = ('balanced_accuracy', 'macro_f1', 'macro_auc', 'melanoma_recall', 'accuracy')


def weight_source(config) -> str:
  """Where the backbone's weights came from before fine-tuning."""
  init, arch = config.model.init, config.model.arch
  if init == 'scratch':
    return 'none: trained from a random initialisation'
  weights = registry.get_spec(arch).weights
  if init == 'imagenet' and weights is not None:
    releases = weights.releases(arch)
    # Keras publishes a file with the top and one without: fine-tuning loads the one without.
    md5, what = releases[1] if isinstance(weights, registry.KerasWeights) else releases[0]
    return f'{what}, md5 {md5}'
  return f'the file {init} (config.model.init)'


def scored_sets(workdir: pathlib.Path, step: int) -> dict[str, dict]:
  """name -> headline metrics with their 95% intervals, of every set scored at `step`."""
  found = {}
  candidates = [('test (training report)', workdir / 'report' / 'metrics.json')]
  candidates += [(path.parent.name, path)
                 for path in sorted((workdir / 'eval').glob('*/metrics.json'))]
  for name, path in candidates:
    try:
      metrics = json.loads(path.read_text())
    except (OSError, ValueError):
      continue
    if metrics.get('step', metrics.get('best_step')) != step:
      continue
    found[name] = {
        'examples': metrics.get('num_examples'),
        'tta': metrics.get('tta', 'none'),
        **{key: metrics.get(key) for key in HEADLINE_METRICS},
        'ci_95': {key: value for key, value in (metrics.get('ci') or {}).items()
                  if key in HEADLINE_METRICS},
    }
  return found


def resize_rule(view) -> str:
  """How to turn an image file into the graph's input, in words (`view`: a pipeline.EvalView)."""
  side = view.source_side
  return (_DECODE.format(size=augment.draft_size(view.image_size, side))
          + (_SHRINK.format(side=side) if side else '')
          + RESIZE_RULES[view.resize_mode].format(size=view.image_size))


def card(run, *, onnx_file: str, opset: int, portable_note: str) -> dict:
  """The model card of `run` (an inference.LoadedRun) exported to `onnx_file`."""
  config, view, description = run.config, run.eval_view, run.description
  saved = json.loads((run.workdir / 'config.json').read_text())
  return {
      'model_file': onnx_file,
      'format': f'ONNX, opset {opset}',
      'intended_use': NOT_A_MEDICAL_DEVICE,
      'classes': list(description.class_names),
      'melanoma_class': description.melanoma,
      'input': {
          'name': 'images',
          'dtype': 'uint8',
          'layout': 'NHWC (batch, height, width, RGB channels)',
          'shape': ['batch', view.image_size, view.image_size, 3],
          'image_size': view.image_size,
          'resize_mode': view.resize_mode,
          'source_short_side': view.source_side,
          'resize_rule': resize_rule(view),
          'colour_constancy': (
              None if view.colour_constancy_power is None else
              f'Shades of Grey, p={view.colour_constancy_power:g}, inside the graph: estimated on '
              'the view it is given (skinjax estimates it on the whole image before cropping), '
              'gains on a grid of 1/4096, rounded to whole levels'),
      },
      'output': {'name': 'probabilities', 'dtype': 'float32', 'shape': ['batch', len(
          description.class_names)], 'meaning': 'softmax over the classes, in the order above'},
      'graph': portable_note,
      'architecture': config.model.arch,
      'weight_source': weight_source(config),
      'run': {'workdir': str(run.workdir), 'checkpoint': run.checkpoint, 'step': run.step,
              'num_params': run.num_params},
      'dataset': {'name': description.name, 'format': description.format,
                  'fingerprint': saved.get('dataset'),
                  'licence': DATA_LICENCES.get(description.format, UNKNOWN_LICENCE)},
      # The extra datasets that joined training (config.data.extra_train), from their fingerprints.
      'extra_train': [{'name': extra['name'], 'format': extra.get('format'),
                       'class_map': extra.get('class_map'),
                       'licence': DATA_LICENCES.get(extra.get('format'), UNKNOWN_LICENCE)}
                      for extra in (saved.get('dataset') or {}).get('extra_train', [])],
      'dataset_description': description.to_json(),
      'metrics': scored_sets(run.workdir, run.step),
      'training_config': {key: saved[key] for key in ('seed', 'data', 'model', 'train', 'eval')
                          if key in saved},
  }


def markdown(card_json: dict) -> str:
  """MODEL_CARD.md: the card for people, the JSON for programs."""
  model_input = card_json['input']
  lines = [
      f"# {card_json['architecture']} skin-lesion classifier ({card_json['dataset']['name']})",
      '', f"**{card_json['intended_use']}**", '',
      f"- Model: `{card_json['model_file']}` ({card_json['format']}); "
      f"{card_json['run']['num_params']:,} parameters; checkpoint "
      f"{card_json['run']['checkpoint']} (step {card_json['run']['step']}) of "
      f"`{card_json['run']['workdir']}`.",
      f"- Weights before fine-tuning: {card_json['weight_source']}.",
      f"- Trained on: {card_json['dataset']['name']}; data licence: "
      f"{card_json['dataset']['licence']}."
      + ''.join(f" Also trained on {extra['name']}; data licence: {extra['licence']}."
                for extra in card_json.get('extra_train', [])),
      f"- Input `images`: uint8 RGB, NHWC, {model_input['image_size']}x"
      f"{model_input['image_size']}, any batch size. {model_input['resize_rule']}",
      f"- Colour constancy: {model_input['colour_constancy'] or 'none'}.",
      f"- Output `probabilities`: float32 (batch, {len(card_json['classes'])}), classes in order: "
      + ', '.join(card_json['classes'])
      + (f"; melanoma is `{card_json['melanoma_class']}`." if card_json['melanoma_class'] else '.'),
      '', '## Results (95% intervals from the lesion bootstrap)', '',
  ]
  if not card_json['metrics']:
    lines.append('No set was scored at this checkpoint\'s step.')
  else:
    lines += ['| set | n | TTA | balanced accuracy | macro-F1 | macro AUC | melanoma recall |',
              '|---|---|---|---|---|---|---|']
    for name, scores in card_json['metrics'].items():
      cells = [_with_interval(scores, key) for key in
               ('balanced_accuracy', 'macro_f1', 'macro_auc', 'melanoma_recall')]
      lines.append(f"| {name} | {scores['examples']} | {scores['tta']} | " + ' | '.join(cells)
                   + ' |')
  lines += ['', 'The full training configuration is in model_card.json (training_config).', '']
  return '\n'.join(lines)


def _with_interval(scores: dict, key: str) -> str:
  value = scores.get(key)
  if value is None:
    return 'n/a'
  interval = scores['ci_95'].get(key)
  return f'{value:.3f}' + (f' [{interval[0]:.3f}, {interval[1]:.3f}]' if interval else '')
