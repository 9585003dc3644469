#!/usr/bin/env bash
# The GPU check: one command, from a fresh checkout, on a machine with a CUDA GPU (about 8 min on
# one H100). Each stage runs under its own time limit; a stage that fails or runs out of time is
# reported in the table and the next one runs anyway.
#
#   bash Testing/gpu/check.sh [--checkpoint MODEL.pt]   # the GPU check
#   bash Testing/gpu/check.sh --dry-run                 # the same steps on the CPU at tiny sizes (~2 min, 2 cores)
#
# Stages:
#   setup        a Python with a CUDA build of PyTorch, and the project (scripts/install.sh --test)
#   gpu-tests    pytest -m gpu Testing/gpu: autocast vs fp32, a real CUDA out-of-memory and the
#                fallback, DDP over NCCL, a fine-tuning and a pretraining step under AMP
#   model        a trained 62M BraTS model for the inference benchmark (below)
#   inference    Testing/benchmarks/inference_speed.py --device cuda --tta --compile reduce-overhead:
#                reference, default, fast, low-memory, TTA and torch.compile (CUDA graphs; its
#                compile time counted) rows on a synthetic BraTS-size case (240x240x155, 1 mm)
#   pretrain-*   Testing/benchmarks/pretrain_throughput.py --device cuda at 96^3, one stage per
#                pretext task built: brainsegfounder (rotation + contrastive + inpainting) and
#                swin-mae on SwinUNETR 62M, mae on ResEnc L, volume-fusion on PCT-Net 45M
# then one table (stage, what, figure, goal, pass/fail), on stdout and in "$OUT/gpu_check.txt"
# when OUT is set (the stages' logs in "$OUT/gpu_check_logs.txt"). Exit 0 when every stage ran and
# gave its figures, 1 otherwise; a missed goal is a "fail" in the table, not an exit code.
#
# The 62M model: the inference benchmark refuses untrained weights (their outputs sit at 0.5, so
# the agreement columns would mean nothing), and BrainSegFounder's released file cannot be
# downloaded everywhere. So the model stage trains the synthetic stand-in of
# Training/configs/bench-62m.yaml as that recipe stands but on 4 synthetic 1 mm cases instead of 6
# (4 epochs x 16 steps at 64^3: a minute or two, most of it making the cases on the CPU), then
# measures its fast mode (Testing/benchmarks/fast_mode.py) for the fast-mode row. Its time figures
# are those of any 62M model; its Dice figures are those of a weak model. --checkpoint skips the
# stage and uses the given file (e.g. model_weights_BRATS-finetune.pt, the released weights).
#
# Installing: a Python whose PyTorch is a CUDA build is kept (an active virtual environment, ./.venv,
# or python3 on the PATH); else ./.venv gets torch==$TORCH_VERSION from the first of $TORCH_INDEXES
# that has it. Offline, pip's own variables point it at wheels: PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR.
# --dry-run installs nothing when ./.venv already works.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

DRY=0
CHECKPOINT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --checkpoint) CHECKPOINT=$(realpath "$2"); shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check.sh: unknown argument $1 (--dry-run, --checkpoint MODEL.pt)" >&2; exit 2 ;;
  esac
  shift
done

TORCH_VERSION=${TORCH_VERSION:-2.13.0}  # scripts/install.sh's CPU pin, as a CUDA build
TORCH_INDEXES=${TORCH_INDEXES:-"https://download.pytorch.org/whl/cu128 https://download.pytorch.org/whl/cu130 https://download.pytorch.org/whl/cu126"}
# One pretrain-<task> stage each, on the backbone the task was published with; a new pretext
# task adds its name here and its backbone in pretrain() below.
PRETEXT_TASKS="brainsegfounder swin-mae mae volume-fusion"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bsf-gpu-check.XXXXXX")
STATUS=$WORK/status.tsv
: >"$STATUS"
export PYTHONPATH="$ROOT/BrainSegFounderSlicer:$ROOT/Training${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export ROOT WORK DRY CHECKPOINT TORCH_VERSION TORCH_INDEXES

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  # stage limits in seconds: generous for 2 cores, which a sound dry run stays well inside
  LIMIT_SETUP=600 LIMIT_TESTS=240 LIMIT_MODEL=180 LIMIT_INFERENCE=240 LIMIT_PRETRAIN=180
else
  DEVICE=cuda
  # upper bounds; about 7 min together expected on an H100 (setup with a ~2.5 GB download included)
  LIMIT_SETUP=240 LIMIT_TESTS=180 LIMIT_MODEL=240 LIMIT_INFERENCE=240 LIMIT_PRETRAIN=90
fi
export DEVICE

# -- the Python this check runs on -------------------------------------------------------------
python_ok() {  # PY has the project's needs (a CUDA torch, unless a dry run): say so in a FIGURE line
  "$1" - <<'EOF'
import importlib.metadata as md, os, sys
import torch, monai, yaml, pytest, SimpleITK, nilearn, brainsegfounder, brainsegfounder_training
assert os.environ["DRY"] == "1" or torch.version.cuda, "not a CUDA build of PyTorch"
assert list(md.entry_points(group="brainsegfounder.commands")), "the training commands are not installed"
where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
print(f"FIGURE python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"MONAI {monai.__version__}; {where}")
if os.environ["DRY"] == "0" and not torch.cuda.is_available():
    sys.exit("PyTorch sees no CUDA GPU here")
EOF
}
cuda_torch() { "$1" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" >/dev/null 2>&1; }

choose_python() {  # the active virtual environment; else ./.venv where it has CUDA torch (or in a dry run); else
  # a python3 on the PATH that has CUDA torch; else ./.venv (setup makes it and puts CUDA torch in)
  if [ -n "${VIRTUAL_ENV:-}" ]; then
    PY=$VIRTUAL_ENV/bin/python
  elif [ -x .venv/bin/python ] && { [ "$DRY" = 1 ] || cuda_torch .venv/bin/python; }; then
    PY=$ROOT/.venv/bin/python
  elif [ "$DRY" = 0 ] && command -v python3 >/dev/null && cuda_torch python3; then
    if python3 -c "import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)"; then
      PY=$(python3 -c "import sys; print(sys.executable)")  # a virtual environment holding CUDA torch: use it
    else
      [ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv  # the system's torch stays visible
      PY=$ROOT/.venv/bin/python
    fi
  else
    PY=$ROOT/.venv/bin/python
  fi
}
choose_python
export PY

setup() {
  set -e
  if python_ok "$PY" 2>/dev/null; then
    echo "kept: $PY has everything"
    return 0
  fi
  if [ "$PY" = "$ROOT/.venv/bin/python" ] && [ ! -x "$PY" ]; then
    python3 -m venv --system-site-packages .venv
  fi
  if [ "$DRY" = 0 ] && ! cuda_torch "$PY"; then
    installed=0
    for index in $TORCH_INDEXES; do  # the local version (+cu128) replaces a CPU build of the same version
      echo "installing torch==$TORCH_VERSION+${index##*/} from $index"
      if "$PY" -m pip install --quiet "torch==$TORCH_VERSION+${index##*/}" --index-url "$index"; then
        installed=1
        break
      fi
    done
    [ "$installed" = 1 ] || { echo "no CUDA build torch==$TORCH_VERSION+cuXXX at $TORCH_INDEXES"; exit 1; }
  fi
  # install.sh keeps the torch it finds; it uses the active virtual environment, else ./.venv
  VIRTUAL_ENV=$([ "$PY" = "$ROOT/.venv/bin/python" ] || dirname "$(dirname "$PY")") \
    PATH="$(dirname "$PY"):$PATH" bash scripts/install.sh --test
  python_ok "$PY"
}

gpu_tests() {
  if [ "$DRY" = 1 ]; then export BSF_GPU_TESTS_ON_CPU=1; fi
  "$PY" -m pytest -q -n 0 -p no:cacheprovider -m gpu -s Testing/gpu/test_gpu.py  # one process: one GPU, timed
}

model() {
  set -e
  if [ -n "$CHECKPOINT" ]; then
    echo "FIGURE given: $CHECKPOINT"
    echo "$CHECKPOINT" >"$WORK/checkpoint"
    return 0
  fi
  if [ "$DRY" = 1 ]; then  # the same two commands, tiny: 3 cases at 3 mm, one step
    synth=(--n 3 --spacing 3)
    overrides=(model.size=tiny train.epochs=1 train.steps_per_epoch=1 train.warmup_epochs=0 train.val_every=1
      data.cache=none validation.overlap=0 model.gradient_checkpointing=false)
  else  # Training/configs/bench-62m.yaml's header and recipe, with 4 cases instead of 6 (a 1 mm case is ~10 s of CPU)
    synth=(--n 4 --spacing 1)
    overrides=()
  fi
  "$PY" -m brainsegfounder synth --out "$WORK/bench-data" "${synth[@]}" --seed 300 --folds 3
  "$PY" -m brainsegfounder finetune --config bench-62m --data "$WORK/bench-data" --out "$WORK/bench-run" \
    --device "$DEVICE" --progress none "${overrides[@]}"
  "$PY" - <<'EOF'
import json, os
summary = json.load(open(os.path.join(os.environ["WORK"], "bench-run", "summary.json")))
best = summary["best"]
print(f"FIGURE {summary['steps']} steps in {summary['time_s']:.0f} s, best epoch {best['epoch']}: held-out Dice "
      + " / ".join(f"{k} {v:.2f}" for k, v in best["dice"].items()))
EOF
  echo "$WORK/bench-run/best.pt" >"$WORK/checkpoint"
  # The fast-mode row needs the model's measured fast mode (meta.fast): measure it where the
  # script is there (about half a minute on a GPU); without one the inference stage leaves that row out.
  if [ "$DRY" = 1 ]; then
    echo "FIGURE fast mode: not measured in a dry run"
  elif [ -f Testing/benchmarks/fast_mode.py ] && "$PY" Testing/benchmarks/fast_mode.py --model "$WORK/bench-run/best.pt" \
    --device cuda --seed 4243 --write "$WORK/bench-run/best-fast.pt" && [ -s "$WORK/bench-run/best-fast.pt" ]; then
    echo "FIGURE fast mode: measured (Testing/benchmarks/fast_mode.py)"
    echo "$WORK/bench-run/best-fast.pt" >"$WORK/checkpoint"
  else
    echo "FIGURE fast mode: none measured (see the log)"
  fi
}

inference() {
  set -e
  local checkpoint
  checkpoint=$(cat "$WORK/checkpoint")
  local extra=()
  if ! "$PY" -c "import sys; from brainsegfounder.checkpoints import load_checkpoint, resolve_meta
sys.exit(0 if getattr(resolve_meta(load_checkpoint(sys.argv[1]), 'brats'), 'fast', None) else 1)" "$checkpoint"; then
    extra+=(--no-fast)
    echo "FIGURE fast-mode row left out: the model has no measured fast mode"
  fi
  if [ "$DRY" = 1 ]; then
    # the rows a GPU run has (no exported CPU runtimes); the compile row with torch.compile's eager
    # backend: the row's own workings, without code generation
    "$PY" Testing/benchmarks/inference_speed.py --checkpoint "$checkpoint" --device cpu --case-spacing 3 --any-size \
      --roi 64 --no-cpu-runtimes --rows low-memory --compile default --compile-backend eager "${extra[@]}"
  else  # torch.compile with CUDA graphs (reduce-overhead), kept in the product only if it pays
    "$PY" Testing/benchmarks/inference_speed.py --checkpoint "$checkpoint" --device cuda --tta --compile reduce-overhead \
      "${extra[@]}"
  fi
}

pretrain() {  # pretrain TASK
  set -e
  local backbone
  case "$1" in
    brainsegfounder | swin-mae) backbone=swinunetr ;;  # BrainSegFounder's three tasks together; VIS-MAE
    mae) backbone=resenc ;;                             # the 3D MAE of nnU-Net's authors (ResEnc L)
    volume-fusion) backbone=pctnet ;;                   # MIS-FM (PCT-Net)
    *) echo "no benchmark for the pretext task $1"; exit 1 ;;
  esac
  local common=(--tasks "$1" --architectures "$backbone")
  if [ "$DRY" = 1 ]; then
    "$PY" Testing/benchmarks/pretrain_throughput.py --device cpu --sizes tiny --roi 64 --steps 1 --warmup 0 --window 4 \
      --subject-spacing 3 --variants reference,ours "${common[@]}"
  else  # the 62M SwinUNETR (ResEnc L and PCT-Net 45M for their tasks), 96^3 crops, 5 timed steps after 2
    "$PY" Testing/benchmarks/pretrain_throughput.py --device cuda --sizes 62M --roi 96 --steps 5 --warmup 2 \
      --variants reference,ours "${common[@]}"
  fi
}
export -f python_ok cuda_torch setup gpu_tests model inference pretrain

# -- the stages ----------------------------------------------------------------------------------
stage() {  # stage NAME LIMIT_S FUNCTION [ARGS]: run it under `timeout`, its output in WORK/NAME.log
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "== $name (at most $limit s)"
  timeout --kill-after=15 "$limit" bash -c '"$@"' _ "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >>"$STATUS"
  tail -n 4 "$WORK/$name.log" | sed 's/^/   /'
}

pretraining() {  # pretraining TASK...: one stage per pretext task
  for task in "$@"; do
    stage "pretrain-$task" "$LIMIT_PRETRAIN" pretrain "$task"
  done
}
tests_and_pretraining() {  # tests_and_pretraining TASK...
  stage gpu-tests "$LIMIT_TESTS" gpu_tests
  pretraining "$@"
}
model_and_inference() {
  stage model "$LIMIT_MODEL" model
  if [ -s "$WORK/checkpoint" ]; then
    stage inference "$LIMIT_INFERENCE" inference
  else
    echo "no model: the model stage failed" >"$WORK/inference.log"
    printf 'inference\tskipped\t0\t%s\n' "$LIMIT_INFERENCE" >>"$STATUS"
  fi
}

stage setup "$LIMIT_SETUP" setup
if [ "$DRY" = 1 ]; then
  # Two lanes side by side, one thread each: on 2 cores this takes about half the time of one
  # lane at two threads, since much of each stage (imports, making cases, I/O) is one thread
  # anyway, and two-thread PyTorch slows down by 3x or more when anything else wants a core.
  # The last pretext task goes to the second lane, which is the shorter without it.
  export OMP_NUM_THREADS=1
  read -r -a tasks <<<"$PRETEXT_TASKS"
  tests_and_pretraining "${tasks[@]:0:${#tasks[@]}-1}" &
  { model_and_inference; pretraining "${tasks[-1]}"; }
  wait
else  # one stage at a time: the timings are the GPU's alone
  # shellcheck disable=SC2086  # one word per task
  tests_and_pretraining $PRETEXT_TASKS
  model_and_inference
fi

# -- the table -----------------------------------------------------------------------------------
table=$WORK/gpu_check.txt
"$PY" Testing/gpu/check_table.py "$WORK" --dry-run "$DRY" >"$table"
code=$?
if [ ! -s "$table" ]; then  # no Python to make the table with: the stages' bare status
  { echo "stage	exit code	seconds	limit"; cat "$STATUS"; } >"$table"
  code=1
fi
cat "$table"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$table" "$OUT/gpu_check.txt"
  for f in "$WORK"/*.log; do echo "===== $(basename "$f")"; cat "$f"; done >"$OUT/gpu_check_logs.txt"
fi
rm -rf "$WORK"
exit $code
