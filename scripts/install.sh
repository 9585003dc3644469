#!/usr/bin/env bash
# Install the engine, the training pipeline, the CLI and (with --test) the test tools into a
# virtual environment.
#   bash scripts/install.sh          # .venv with the brainsegfounder command
#   bash scripts/install.sh --test   # the same, plus pytest, the web app (trame-slicer), Playwright,
#                                    # and (apt-get, as root) Debian's Chromium for the browser test and
#                                    # mricron-data's Colin27 head for the brain-extraction test and
#                                    # tcmalloc (libtcmalloc-minimal4) for the study's training children
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
[ "${1:-}" = "--test" ] && extras="[training,test,web]"
"$py" -m pip install --quiet -e ".${extras}"
"$py" -m pip install --quiet --no-deps -r BrainSegFounderSlicer/brainsegfounder/requirements-nodeps.txt
# The test suite's system packages: Chromium (browser test), Colin27 with skull (brain extraction test), tcmalloc.
missing=""
[ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1 && missing="chromium"
[ "${1:-}" = "--test" ] && [ ! -f /usr/share/mricron/templates/ch2.nii.gz ] && missing="$missing mricron-data"
# tcmalloc: the label-efficiency study's training children run with it (brainsegfounder/allocator.py)
[ "${1:-}" = "--test" ] && ! "$py" -c "import ctypes.util, sys; sys.exit(not ctypes.util.find_library('tcmalloc_minimal'))" &&
  missing="$missing libtcmalloc-minimal4"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # shellcheck disable=SC2086  # two package names
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null) ||
      echo "note: could not install$missing; the tests that need them will be skipped" >&2
  else
    echo "note: missing$missing (apt-get install$missing); the tests that need them will be skipped" >&2
  fi
fi
"$py" -c "import torch, monai, brainsegfounder; print(f'brainsegfounder {brainsegfounder.__version__}: torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), MONAI {monai.__version__}')"
