"""The model manager: registry, downloads from a loopback server (checksums, resume), imports."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
from typing import ClassVar

import pytest

from brainsegfounder.errors import Cancelled, UserError
from brainsegfounder.progress import CancelToken
from BrainSegFounderSlicerLib.models import REGISTRY_FILE, ModelManager, import_command
from BrainSegFounderSlicerLib.runner import BackgroundProcess


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload, honouring ``Range: bytes=N-`` as a real file host does."""

    payload = b""
    requests: ClassVar[list] = []  # the Range headers asked for, in order

    def do_GET(self):
        start = 0
        header = self.headers.get("Range")
        self.requests.append(header)
        if header:
            start = int(header.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def registry_with(tmp_path, url, sha256, size=None):
    entry = {
        "id": "served",
        "name": "Served model",
        "version": "1",
        "task": "brats",
        "inputs": ["flair", "t1ce", "t1", "t2"],
        "label_schema": "brats_regions",
        "file": "served.pt",
        "url": url,
        "sha256": sha256,
        "size_bytes": size,
        "license": "Apache-2.0",
    }
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": [entry]}))
    return path


def test_shipped_registry_lists_the_released_and_demo_models(home, tmp_path):
    manager = ModelManager(cache=tmp_path / "dl")
    entries = {e.id: e for e in manager.entries()}
    assert entries["brainsegfounder-brats"].sha256 == "6fd4ec5dc690f365a99c10b92f0d5519ca8a6b68feb844ff3424e9f6a01f6a39"
    assert entries["brainsegfounder-brats"].inputs == ["flair", "t1ce", "t1", "t2"]
    assert entries["brainsegfounder-atlas"].inputs == ["t1"]
    assert "uk-biobank" in entries["brainsegfounder-atlas"].license
    demo = manager.choice("registry:brats-synthetic-demo")
    assert demo.available
    assert demo.status() == "ready"
    for shipped in ("brats-synthetic-demo", "brats-synthetic-realistic"):  # every model in Resources/Models
        choice = manager.choice(f"registry:{shipped}")
        assert choice.status() == "ready", shipped
        assert hashlib.sha256(choice.path.read_bytes()).hexdigest() == entries[shipped].sha256
        assert choice.path.stat().st_size == entries[shipped].size_bytes
    atlas = manager.choice("registry:brainsegfounder-atlas")
    assert not atlas.available
    assert not atlas.can_download
    assert "Import from file" in atlas.status()
    with pytest.raises(UserError, match="no published SHA-256"):
        manager.download("brainsegfounder-atlas")
    # the panel's Fast mode box: on with its measured cost for the demo, off for an unmeasured model
    assert demo.fast
    assert demo.fast_summary.startswith(f"{demo.fast['speedup']:.1f}x faster")
    assert not atlas.fast
    assert "no measured fast mode" in atlas.fast_summary


def test_download_keeps_only_a_file_whose_checksum_matches(home, tmp_path, server):
    payload = bytes(range(256)) * 20000  # 5 MB
    RangeHandler.payload, RangeHandler.requests = payload, []
    right = hashlib.sha256(payload).hexdigest()
    wrong = hashlib.sha256(b"something else").hexdigest()
    cache = tmp_path / "dl"

    manager = ModelManager(registry_with(tmp_path, f"{server}/served.pt", wrong), cache=cache)
    with pytest.raises(UserError, match="does not match its published SHA-256"):
        manager.download("served")
    assert not any(cache.iterdir())  # nothing kept, not even the partial file

    manager = ModelManager(registry_with(tmp_path, f"{server}/served.pt", right), cache=cache)
    seen = []
    path = manager.download("served", progress=lambda stage, done, total, message="": seen.append((stage, done, total)))
    assert path == cache / "served.pt"
    assert path.read_bytes() == payload
    assert seen[-1] == ("verify", 1, 1)
    assert ("download", len(payload), len(payload)) in seen
    assert manager.choice("registry:served").available


def test_download_resumes_after_an_interruption(home, tmp_path, server):
    payload = bytes(range(256)) * 20000
    RangeHandler.payload, RangeHandler.requests = payload, []
    manager = ModelManager(
        registry_with(tmp_path, f"{server}/served.pt", hashlib.sha256(payload).hexdigest()), cache=tmp_path / "dl"
    )
    token = CancelToken()

    def stop_after_first_block(stage, done, total, message=""):
        token.cancel()

    with pytest.raises(Cancelled):
        manager.download("served", progress=stop_after_first_block, cancel=token)
    part = tmp_path / "dl" / "served.pt.part"
    kept = part.stat().st_size
    assert 0 < kept < len(payload)
    assert manager.download("served").read_bytes() == payload
    assert RangeHandler.requests == [None, f"bytes={kept}-"]  # the second request asked only for the rest
    assert not part.exists()


@pytest.mark.slow
def test_import_from_file_known_and_new_models(home, tmp_path):
    manager = ModelManager(cache=tmp_path / "dl")
    demo = manager.choice("registry:brats-synthetic-demo").path
    # a registry model brought on a USB stick: recognised by its checksum, stored as that model
    copy = tmp_path / "usb" / "whatever-name.pt"
    copy.parent.mkdir()
    shutil.copyfile(demo, copy)
    entry = manager.import_known(copy)
    assert entry is not None
    assert entry.id == "brats-synthetic-demo"
    assert (tmp_path / "dl" / entry.file).is_file()
    # any other model goes through the engine, which checks it loads, then lists it as a local version
    other = tmp_path / "usb" / "colleague.pt"
    import torch

    ckpt = torch.load(demo, weights_only=True)  # the demo's weights as someone else's version
    ckpt["meta"]["version"] = "colleague-1"
    torch.save(ckpt, other)
    assert manager.import_known(other) is None
    process = BackgroundProcess(import_command(other, "colleague")).start()
    assert process.wait(timeout=120) == "ok", process.details()
    local = manager.choice("local:colleague")
    assert local.available
    assert local.version == "colleague-1"
    assert local.inputs == ["flair", "t1ce", "t1", "t2"]
    assert local.label_schema == "brats_regions"  # its label names come from the engine's schema
    # a file that is not a model is refused with the engine's one line
    bad = tmp_path / "usb" / "notes.pt"
    bad.write_text("hello")
    process = BackgroundProcess(import_command(bad, "notes")).start()
    assert process.wait(timeout=120) == "error"
    assert "notes.pt" in process.error_line()
    assert not (home / "models" / "notes.pt").exists()


def test_registry_entries_cannot_name_files_outside_the_cache(tmp_path):
    data = json.loads(REGISTRY_FILE.read_text())
    data["models"][0]["file"] = "../../.bashrc"
    (tmp_path / "models.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="not usable as a folder name"):
        ModelManager(tmp_path / "models.json").entries()
