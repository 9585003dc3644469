"""The model manager: the registry of known models, verified downloads, imports, local versions.

``Resources/models.json`` lists the models we know (name, version, task, inputs in channel
order, label schema, URL, SHA-256, size, licence). Downloads go to
``~/.brainsegfounder/downloads`` (``$BRAINSEGFOUNDER_HOME``), outside any Slicer installation,
so they survive Slicer upgrades; they resume after an interruption and are kept only when the
SHA-256 matches. Locally fine-tuned and imported models live in the engine's model folder
(``~/.brainsegfounder/models``) with a ``NAME.json`` description written by the engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from brainsegfounder import fast_mode, licences, registry
from brainsegfounder.atomic import atomic_path
from brainsegfounder.errors import Cancelled, UserError
from brainsegfounder.names import plain_name
from brainsegfounder.paths import sha256_of

from .runner import engine_command

REGISTRY_FILE = registry.REGISTRY_FILE  # extension resources (source tree and install)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry, checked when read (its file name can never leave the cache)."""

    id: str
    name: str
    version: str
    task: str
    inputs: List[str]
    label_schema: str  # the label names are the engine's schema (brainsegfounder.labels)
    file: str
    license: str
    url: Optional[str] = None
    sha256: Optional[str] = None
    size_bytes: Optional[int] = None
    bundled: Optional[str] = None
    description: str = ""
    fast: Optional[dict] = None  # the measured fast mode (as the model's meta.fast says), None: none
    license_needs_acceptance: bool = False  # its terms must be accepted before first use (licences.py)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelEntry":
        registry.check_entry(data)  # its names: the engine checks them for both
        try:
            entry = cls(
                id=data["id"],
                name=data["name"],
                version=str(data["version"]),
                task=data["task"],
                inputs=list(data["inputs"]),
                label_schema=data["label_schema"],
                file=data["file"],
                license=data["license"],
                url=data.get("url"),
                sha256=data.get("sha256"),
                size_bytes=data.get("size_bytes"),
                bundled=data.get("bundled"),
                description=data.get("description", ""),
                fast=data.get("fast"),
                license_needs_acceptance=bool(data.get("license_needs_acceptance", False)),
            )
        except KeyError as error:
            raise UserError(
                f"model registry entry {data.get('id', '?')!r} lacks {error.args[0]!r}; fix the registry file"
            ) from None
        if entry.sha256 is not None and not _SHA256.match(entry.sha256):
            raise UserError(f"model {entry.id}: sha256 must be 64 lower-case hex digits")
        if entry.url is not None and not entry.url.startswith(("https://", "http://")):
            raise UserError(f"model {entry.id}: url must be http(s)")
        return entry


@dataclass
class ModelChoice:
    """One line of the panel's model selector."""

    key: str  # "registry:<id>" or "local:<name>"
    title: str
    version: str
    license: str
    task: str
    inputs: List[str]
    label_schema: str
    path: Optional[Path] = None  # None: must be downloaded or imported first
    entry: Optional[ModelEntry] = None
    description: str = ""
    fast: Optional[dict] = None  # its measured fast mode, None: it offers none
    architecture: str = ""  # SwinUNETR, ResEncUNet, PCTNet ("" where not known before it is loaded)

    @property
    def licence_pending(self) -> bool:
        """Whether its licence must still be accepted before it is used (asked once per model)."""
        entry = self.entry
        return bool(entry and entry.license_needs_acceptance and not licences.is_accepted(entry.id, entry.license))

    @property
    def fast_summary(self) -> str:
        """What the panel's Fast mode box says of this model (its tooltip)."""
        if not self.fast:
            return "this model has no measured fast mode: it always runs at its default settings"
        return fast_mode.describe(self.fast) + " on the cases it was measured on"

    @property
    def available(self) -> bool:
        return self.path is not None and self.path.is_file()

    @property
    def can_download(self) -> bool:
        return self.entry is not None and bool(self.entry.url) and bool(self.entry.sha256) and not self.available

    def panel_text(self, panel_inputs) -> str:
        """What a front end shows under the model selector: version, licence, status, description,
        and the inputs this front end has no selector for."""
        text = f"version {self.version}; licence: {self.license}; {self.status()}"
        text += "\nIts licence must be accepted before its first use." if self.licence_pending else ""
        text += f"\n{self.description}" if self.description else ""
        missing = [m for m in self.inputs if m not in panel_inputs]
        if missing:
            text += f"\nThis panel has no selector for {', '.join(missing)}; "
            text += "use the brainsegfounder command for this model."
        return text

    def status(self) -> str:
        if self.available:
            return "ready"
        if self.can_download:
            size = f", {self.entry.size_bytes / 1e6:.0f} MB" if self.entry.size_bytes else ""
            return f"not downloaded{size}"
        return "no published checksum: download it yourself and use Import from file"


class ModelManager:
    def __init__(
        self,
        registry_file: os.PathLike = REGISTRY_FILE,
        cache: Optional[os.PathLike] = None,
        resources: Optional[os.PathLike] = None,
    ) -> None:
        self.registry_file = Path(registry_file)
        self.resources = Path(resources) if resources else self.registry_file.parent
        self._cache = Path(cache) if cache else None

    @property
    def cache(self) -> Path:
        return self._cache or registry.downloads_dir()

    def entries(self) -> List[ModelEntry]:
        return [ModelEntry.from_dict(d) for d in registry.read_registry(self.registry_file)]

    def entry(self, entry_id: str) -> ModelEntry:
        for entry in self.entries():
            if entry.id == entry_id:
                return entry
        raise UserError(f"unknown model {entry_id!r}; choose one from the list")

    def local_path(self, entry: ModelEntry) -> Optional[Path]:
        """The entry's file if it is here: shipped with the extension, or downloaded/imported."""
        return registry.entry_file(entry.file, entry.bundled, self.resources, self.cache)

    def choices(self) -> List[ModelChoice]:
        """Registry models (ready or not), then local models (fine-tuned here or imported)."""
        found = [
            ModelChoice(
                key=f"registry:{e.id}",
                title=e.name,
                version=e.version,
                license=e.license,
                task=e.task,
                inputs=list(e.inputs),
                label_schema=e.label_schema,
                path=self.local_path(e),
                entry=e,
                description=e.description,
                fast=e.fast,
            )
            for e in self.entries()
        ]
        for name, path in registry.local_models().items():
            info = _read_description(path)
            if info is None:
                continue  # not described: re-import it with Import from file
            provenance = info.get("provenance") or {}
            architecture = str(info.get("architecture", ""))
            found.append(
                ModelChoice(
                    key=f"local:{name}",
                    title=f"{name} (local, {architecture})" if architecture else f"{name} (local)",
                    version=str(info.get("version", "?")),
                    license=str(info.get("license") or provenance.get("license") or "as its base model"),
                    task=info.get("task", ""),
                    inputs=list(info["modalities"]),
                    label_schema=info["label_schema"],
                    path=path,
                    description=info.get("description", "")
                    + (f"; base {provenance['base']}" if provenance.get("base") else ""),
                    fast=info.get("fast"),
                    architecture=architecture,
                )
            )
        return found

    def choice(self, key: str) -> ModelChoice:
        for choice in self.choices():
            if choice.key == key:
                return choice
        raise UserError(f"model {key!r} is no longer there; choose another")

    # -- download --------------------------------------------------------------------------
    def download(
        self, entry_id: str, progress: Callable[..., None] = lambda *a, **k: None, cancel=None, timeout_s: float = 60.0
    ) -> Path:
        """Fetch an entry into the cache, resuming a partial file; kept only if its SHA-256 matches."""
        entry = self.entry(entry_id)
        existing = self.local_path(entry)
        if existing is not None:
            return existing
        if not entry.url:
            raise UserError(f"{entry.name} has no download address; use Import from file")
        if not entry.sha256:
            raise UserError(
                f"{entry.name} has no published SHA-256, so it is not downloaded automatically; "
                f"download {entry.url} yourself and use Import from file"
            )
        self.cache.mkdir(parents=True, exist_ok=True)
        target = self.cache / entry.file
        part = target.with_name(target.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(entry.url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                resumed = have > 0 and response.status == 206
                if not resumed:
                    have = 0  # the server ignored the range: start over
                length = response.headers.get("Content-Length")
                total = have + int(length) if length else (entry.size_bytes or 0)
                with Path(part).open("ab" if resumed else "wb") as f:
                    while True:
                        if cancel is not None and cancel.cancelled:
                            raise Cancelled("download paused; start it again to resume")
                        block = response.read(_CHUNK)
                        if not block:
                            break
                        f.write(block)
                        have += len(block)
                        progress("download", have, total, "")
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # the partial file is already complete
                pass
            else:
                raise UserError(
                    f"download of {entry.name} failed ({error.code} {error.reason}); "
                    "try again later, or download it yourself and use Import from file"
                ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise UserError(
                f"download of {entry.name} stopped ({reason}); start it again to resume, or download "
                f"{entry.url} yourself and use Import from file"
            ) from None
        progress("verify", 0, 1, "checking SHA-256")
        digest = sha256_of(part)
        if digest != entry.sha256:
            part.unlink()
            raise UserError(
                f"the downloaded {entry.file} does not match its published SHA-256 and was deleted; "
                "try again, or download it yourself and use Import from file"
            )
        Path(part).replace(target)
        progress("verify", 1, 1, "")
        return target

    # -- import ----------------------------------------------------------------------------
    def import_known(self, source: os.PathLike) -> Optional[ModelEntry]:
        """If ``source`` is a registry model (same SHA-256), copy it into the cache and return its
        entry; else None (the caller registers it as a local model through the engine, which
        checks that it loads)."""
        source = Path(source)
        if not source.is_file():
            raise UserError(f"{source} is not a file; choose a model file (.pt, .pth)")
        digest = sha256_of(source)
        for entry in self.entries():
            if entry.sha256 == digest:
                self.cache.mkdir(parents=True, exist_ok=True)
                with atomic_path(self.cache / entry.file, suffix=".tmp") as tmp:
                    shutil.copyfile(source, tmp)
                return entry
        return None


def _read_description(path: Path) -> Optional[dict]:
    try:
        info = json.loads(registry.description_path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if {"modalities", "label_schema"} <= set(info) else None


def import_command(source: os.PathLike, name: str) -> List[str]:
    """The engine command that checks a checkpoint loads and adds it to the local models."""
    return engine_command("models", "register", str(source), "--name", plain_name(name, "model name"))
