#!/usr/bin/env bash
# Install the engine, the training pipeline, the CLI and (with --test) the test tools into a
# virtual environment.
#   bash scripts/install.sh          # .venv with the brainsegfounder command
#   bash scripts/install.sh --test   # the same, plus pytest
# The brain-extraction test also wants Colin27: apt-get install mricron-data (Debian/Ubuntu).
# Uses the active virtual environment if there is one, else ./.venv (made with access to the
# system's packages, so a CUDA PyTorch already installed there is used as is). PyTorch is
# installed only when none is importable, pinned to the CPU build this machine kind carries.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${VIRTUAL_ENV:-}" ]; then
  py=python
else
  [ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
  py=.venv/bin/python
fi

if ! "$py" -c "import torch" >/dev/null 2>&1; then
  "$py" -m pip install --quiet "torch==2.13.0"
fi

extras="[training]"
[ "${1:-}" = "--test" ] && extras="[training,test]"
"$py" -m pip install --quiet -e ".${extras}"
"$py" -m pip install --quiet --no-deps -r BrainSegFounderSlicer/brainsegfounder/requirements-nodeps.txt
"$py" -c "import torch, monai, brainsegfounder; print(f'brainsegfounder {brainsegfounder.__version__}: torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), MONAI {monai.__version__}')"
