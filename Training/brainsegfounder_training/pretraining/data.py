"""Streaming crops for pretraining: worker processes, an optional disk cache, bad subjects skipped.

No cohort is held in memory: each item is read (or taken from the disk cache) when a worker
needs it. The sampler yields ``(subject index, seed)`` pairs from an endless sequence of
seeded permutations, one pair per position of a global stream that the processes of a DDP
run share out; an item is a pure function of its pair. So any step of any run can be
re-created without replaying the ones before it (resume), whatever the number of workers.

A subject that cannot be read (a missing, truncated or corrupt file, an empty image) is
skipped: the next subject in the permutation takes its place and the skip travels with the
batch to be listed in the run's ``skipped.jsonl``. Only ``max_tries`` failures in a row (a
lost disk, a wrong data path) stop the run, with the state of its last checkpoint kept.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.transforms import MapTransform

from brainsegfounder.errors import UserError

from ..harness.data import files_key, read_network_volume
from .subjects import Subject

READ_ERRORS = (UserError, RuntimeError, OSError, ValueError, EOFError, zlib.error)


def _reason(error: BaseException) -> str:
    """The first line of the innermost error (MONAI wraps a transform's error in its own)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def item_seed(seed: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


class LoadSubject(MapTransform):
    """``{"subject": Subject}`` -> ``{"image": (C,i,j,k) float16, "id"}``: read exactly as fine-tuning
    and ``segment`` read (z-score over the brain); float16 halves the disk cache."""

    def __init__(self, orientation: str):
        super().__init__(keys=["subject"])
        self.orientation = orientation

    def __call__(self, data):
        subject: Subject = data["subject"]
        # The engine's reader refuses empty, non-finite and truncated images with one line each.
        volume, _, _ = read_network_volume(subject.images, self.orientation)
        return {"image": volume.astype(np.float16), "id": subject.subject_id}


def subject_key(item) -> bytes:
    """Disk-cache key of a subject: its files and their modification times."""
    return files_key(item["subject"].images.values())


class CropStream(torch.utils.data.Dataset):
    """``dataset[(index, seed)]`` -> ``{"image": (crops, C, *roi) float32, "id", "skipped"}``."""

    def __init__(
        self,
        subjects: Sequence[Subject],
        orientation: str,
        roi: Sequence[int],
        crops: int,
        cache_dir: Optional[Path] = None,
        max_tries: int = 20,
    ):
        from monai.data import Dataset, PersistentDataset
        from monai.transforms import RandSpatialCropSamples, SpatialPad

        self.subjects = list(subjects)
        items = [{"subject": s} for s in self.subjects]
        load = LoadSubject(orientation)
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            self.volumes = PersistentDataset(
                items, load, cache_dir=cache_dir, hash_func=subject_key, hash_transform=None
            )
        else:
            self.volumes = Dataset(items, load)
        self.pad = SpatialPad(tuple(roi))
        self.crop = RandSpatialCropSamples(tuple(roi), num_samples=crops, random_size=False)
        self.max_tries = max_tries

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        skipped: List[dict] = []
        for attempt in range(self.max_tries):
            subject = self.subjects[(index + attempt) % len(self.subjects)]
            try:
                volume = self.volumes[(index + attempt) % len(self.subjects)]["image"]
            except READ_ERRORS as error:
                skipped.append({"id": subject.subject_id, "reason": _reason(error)})
                continue
            padded = self.pad(torch.as_tensor(np.asarray(volume), dtype=torch.float32))
            self.crop.set_random_state(seed=seed % 2**32)
            crops = torch.stack([torch.as_tensor(c) for c in self.crop(padded)])
            return {"image": crops.as_subclass(torch.Tensor), "id": subject.subject_id, "skipped": skipped}
        raise UserError(
            f"{self.max_tries} subjects in a row could not be read (e.g. {skipped[0]['id']}: "
            f"{skipped[0]['reason']}); check that the data is reachable, then resume the run"
        )


class StreamSampler(torch.utils.data.Sampler):
    """(subject index, seed) for each item of steps ``[start, end)`` on this process.

    The global stream position of item ``slot`` of ``step`` on ``rank`` is
    ``(step * world + rank) * batch + slot``; position ``p`` takes place ``p mod n`` of the
    permutation for pass ``p div n`` (seeded by (seed, pass))."""

    def __init__(self, n: int, batch: int, seed: int, start: int, end: int, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed = n, batch, seed
        self.start, self.end, self.rank, self.world = start, end, rank, world
        self._pass, self._perm = None, None

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.batch

    def _permutation(self, pass_index: int) -> np.ndarray:
        if pass_index != self._pass:
            self._pass = pass_index
            self._perm = np.random.default_rng([self.seed, pass_index]).permutation(self.n)
        return self._perm

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        for step in range(self.start, self.end):
            for slot in range(self.batch):
                position = (step * self.world + self.rank) * self.batch + slot
                pass_index, place = divmod(position, self.n)
                yield int(self._permutation(pass_index)[place]), item_seed(self.seed, position)


def collate(items):
    """Crops of all volumes as one batch (B * crops, C, *roi); ids and skips as lists."""
    return {
        "image": torch.cat([it["image"] for it in items]),
        "ids": [it["id"] for it in items],
        "skipped": [s for it in items for s in it["skipped"]],
    }


def batches(loader):
    """The loader's batches; a UserError raised in a worker process comes back as its own one line
    (the DataLoader wraps it in the worker's traceback)."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except UserError as error:
            lines = [line for line in str(error).splitlines() if line.strip()]
            raise UserError(lines[-1].split("UserError: ", 1)[-1] if lines else "a data worker failed") from None
        yield batch


def stream_loader(
    dataset: CropStream,
    batch: int,
    seed: int,
    start: int,
    end: int,
    rank: int,
    world: int,
    workers: int,
    pin_memory: bool = False,
):
    sampler = StreamSampler(len(dataset), batch, seed, start, end, rank, world)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )
