"""tcmalloc for training children (brainsegfounder.allocator): preloaded where installed, with
PyTorch as their CPU runtime (OpenVINO dies under it), and never where the environment says no."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from brainsegfounder.allocator import CHOICE, CPU_RUNTIME, allocator_in, tcmalloc_library, with_fast_allocator

from helpers import ROOT


def test_the_environment_can_refuse_it():
    for env in ({CHOICE: "system"}, {CPU_RUNTIME: "openvino"}, {CPU_RUNTIME: "onnxruntime"}):
        assert with_fast_allocator(env) == env
        assert allocator_in(with_fast_allocator(env)) == "glibc malloc"


@pytest.mark.skipif(
    tcmalloc_library() is None, reason="tcmalloc is not installed (apt-get install libtcmalloc-minimal4)"
)
def test_a_child_runs_with_tcmalloc_and_pytorch_inference(tmp_path):
    env = with_fast_allocator({**os.environ, "PYTHONPATH": str(ROOT / "BrainSegFounderSlicer")})
    assert env[CPU_RUNTIME] == "torch"
    assert allocator_in(env) == tcmalloc_library()
    assert with_fast_allocator(env) == env  # preloaded once, not twice
    child = subprocess.run(
        [sys.executable, "-c", "import torch; torch.zeros(1 << 24); print(open('/proc/self/maps').read())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "libtcmalloc" in child.stdout
    plain = subprocess.run(
        [sys.executable, "-c", "print(open('/proc/self/maps').read())"],
        env=with_fast_allocator({**os.environ, CHOICE: "system"}),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "libtcmalloc" not in plain.stdout
