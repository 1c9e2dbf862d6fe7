#!/usr/bin/env bash
# One prepared GPU check, about 8 minutes on one GPU machine (sized for an H200):
#
#   scripts/gpu_check.sh [--dry] [OUT_DIR]      (OUT_DIR: default $OUT, else runs/gpu_check)
#
#   1. install   pip install -e '.[cuda]' (jax[cuda12]). Offline, carry wheels and set
#                PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR (pip reads both), or GPU_CHECK_SKIP_INSTALL=1
#                where the environment is ready.
#   2. devices   what JAX sees; fails unless it is a GPU.
#   3. train_*   scripts/benchmark_train.py: resnet50 224 px float32 and bfloat16 (batch 256),
#                efficientnetb0 224 px (batch 256), efficientnetb7 600 px (batch 8).
#   4. input     scripts/benchmark_input.py with one grain worker per core, with the resnet50 step.
#                On the synthetic source unless GPU_CHECK_DATA_DIR names a prepared HAM10000: then
#                its figure is synthetic 64x48 images resized and augmented, no JPEG decoding.
#   5. demo_train  configs/demo.py trained for real, its report's figures.
#
# Each step writes OUT_DIR/<step>.json (7 files: the device tool returns at most 8, which leaves
# room for a log), with the step's wall seconds added as wall_s. A failing step stops the script,
# which names it on stderr; each runs under a time limit, so a hang fails too (exit 124).
#
# --dry (or GPU_CHECK_DRY=1): the same steps on CPU with tiny sizes, 1 step, no install, so that
# tests/test_gpu_check.py keeps this script working where no GPU is.
#
# Environment: PYTHON (default python3).
set -euo pipefail

DRY=${GPU_CHECK_DRY:-0}
if [[ ${1:-} == --dry ]]; then
  DRY=1
  shift
fi
OUT_DIR=${1:-${OUT:-runs/gpu_check}}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)  # before the cd below: a relative OUT_DIR is the caller's
cd "$(dirname "$0")/.."
# scripts/*.py must import this checkout's skinjax, not another installed copy.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
# A fresh compilation cache unless one is set: compile_s figures are then cold compiles,
# comparable between machines.
export SKINJAX_COMPILATION_CACHE=${SKINJAX_COMPILATION_CACHE:-$WORK/compilation-cache}

STEP=setup
STEP_START=$SECONDS
on_exit() {
  local rc=$?
  rm -rf "$WORK"
  if ((rc != 0)); then
    local why=''
    ((rc == 124)) && why=', timed out'
    echo "gpu_check: step '$STEP' failed (exit $rc$why); its output is above." >&2
  else
    echo "gpu_check: all steps passed; figures in $OUT_DIR"
  fi
}
trap on_exit EXIT

begin() {
  STEP=$1
  STEP_START=$SECONDS
  echo "== gpu_check: $STEP"
}

# save_json NAME FILE: FILE's last line must be a JSON object; saved as OUT_DIR/NAME.json with
# the step's wall seconds.
save_json() {
  "$PYTHON" - "$2" "$OUT_DIR/$1.json" "$((SECONDS - STEP_START))" <<'EOF'
import json, sys
source, target, wall = sys.argv[1:]
figures = json.loads(open(source).read().strip().splitlines()[-1])
figures['wall_s'] = int(wall)
open(target, 'w').write(json.dumps(figures, indent=1) + '\n')
print(json.dumps(figures))
EOF
}

# json_step NAME LIMIT_S COMMAND...: runs COMMAND --json under a time limit, keeps its figures.
json_step() {
  local name=$1 limit=$2
  shift 2
  begin "$name"
  timeout --kill-after=10 "$limit" "$@" --json >"$WORK/$name.out"
  save_json "$name" "$WORK/$name.out"
}

ARCHS=(resnet50 efficientnetb0 efficientnetb7)  # the architectures the GPU plan benchmarks
if ((DRY)); then
  # arch image_size batch dtype steps rounds: the smallest the script takes. bfloat16 only:
  # tests/test_benchmarks.py runs float32, and one run less keeps the dry mode under a minute.
  TRAIN_RUNS=('small_cnn 32 4 bfloat16 1 1')
  INPUT_FLAGS=(--image_size=32 --batch_size=8 --batches=10 --workers=0 --with_step=small_cnn)
  DEMO_FLAGS=(--config.data.synthetic_examples=240 --config.data.image_size=24
              --config.train.batch_size=16 --config.train.eval_batch_size=32
              --config.train.num_epochs=1)
else
  TRAIN_RUNS=('resnet50 224 256 float32 10 3' 'resnet50 224 256 bfloat16 10 3'
              'efficientnetb0 224 256 float32 10 3' 'efficientnetb7 600 8 float32 5 2')
  INPUT_FLAGS=(--image_size=224 --batch_size=128 --batches=40 "--workers=$(nproc)"
               --with_step=resnet50)
  DEMO_FLAGS=()
fi
if [[ -n ${GPU_CHECK_DATA_DIR:-} ]]; then
  INPUT_FLAGS+=("--data_dir=$GPU_CHECK_DATA_DIR")
else
  INPUT_FLAGS+=(--config.data.source=synthetic)
fi

if ((DRY)) || [[ ${GPU_CHECK_SKIP_INSTALL:-0} == 1 ]]; then
  echo "== gpu_check: install skipped"
else
  begin install
  timeout --kill-after=10 300 "$PYTHON" -m pip install --quiet -e '.[cuda]'
fi

begin devices
# Also checks that the GPU plan's architectures exist, so that the dry mode catches a rename.
timeout --kill-after=10 120 "$PYTHON" - "$DRY" "${ARCHS[@]}" >"$WORK/devices.out" <<'EOF'
import json, sys
import jax
from skinjax.models import registry
dry, archs = sys.argv[1] == '1', sys.argv[2:]
if missing := sorted(set(archs) - set(registry.ARCHITECTURES)):
  sys.exit(f'the plan names unknown architectures: {", ".join(missing)}')
devices = jax.devices()
print(json.dumps({'backend': jax.default_backend(), 'device_count': len(devices),
                  'device_kind': devices[0].device_kind, 'devices': [str(d) for d in devices],
                  'jax_version': jax.__version__}))
if not dry and jax.default_backend() != 'gpu':
  sys.exit(f'JAX sees no GPU, only {devices}: is the cuda extra (jax[cuda12]) installed and '
           'the driver visible (nvidia-smi)?')
EOF
save_json devices "$WORK/devices.out"

for run in "${TRAIN_RUNS[@]}"; do
  read -r arch size batch dtype steps rounds <<<"$run"
  json_step "train_${arch}_${size}_${dtype}" 240 "$PYTHON" scripts/benchmark_train.py \
    "--arch=$arch" "--image_size=$size" "--batch_size=$batch" "--dtype=$dtype" \
    "--steps=$steps" "--rounds=$rounds"
done

json_step input 180 "$PYTHON" scripts/benchmark_input.py "${INPUT_FLAGS[@]}"

begin demo_train
timeout --kill-after=10 300 "$PYTHON" -m skinjax.main --config=configs/demo.py \
  "--workdir=$WORK/demo" "${DEMO_FLAGS[@]}"
"$PYTHON" - "$WORK/demo/report" >"$WORK/demo_train.out" <<'EOF'
import json, pathlib, sys
report = pathlib.Path(sys.argv[1])
metrics = json.loads((report / 'metrics.json').read_text())
timing = json.loads((report / 'timing.json').read_text())
print(json.dumps({'config': 'configs/demo.py', 'train_time_s': timing['train_time_s'],
                  **{key: metrics[key] for key in ('num_examples', 'accuracy', 'balanced_accuracy',
                                                   'macro_f1', 'macro_auc')}}))
EOF
save_json demo_train "$WORK/demo_train.out"
STEP=done
