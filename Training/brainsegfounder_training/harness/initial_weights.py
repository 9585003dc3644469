"""What a run reports about its initial weights, and how pretrained input kernels meet new inputs.

When the pretrained input channels differ from the run's (a 1- or 2-channel stage-1 encoder
for the 4 BraTS contrasts), the kernels are *inflated*, never thrown away: a new channel
whose modality the source also had gets that channel's kernel, any other the mean kernel
over the source channels, scaled by ``C_source / C_new`` so that the summed response to
equal inputs keeps its magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from brainsegfounder.modalities import canonical


@dataclass
class InitReport:
    source: str = "random initialisation"
    kind: str = "scratch"
    loaded: List[str] = field(default_factory=list)
    inflated: Dict[str, str] = field(default_factory=dict)
    reinitialised: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "loaded_count": len(self.loaded),
            "loaded": self.loaded,
            "inflated": self.inflated,
            "reinitialised": self.reinitialised,
            "ignored": self.ignored,
        }

    def summary(self) -> str:
        if self.kind == "scratch":
            return "weights: random initialisation"
        text = f"weights: {len(self.loaded)} tensors from {self.source} ({self.kind})"
        if self.inflated:
            text += f"; inflated {len(self.inflated)} input kernels"
        if self.reinitialised:
            text += f"; re-initialised {len(self.reinitialised)} tensors"
        return text


def same_tensors(state, names) -> set:
    """``names`` and every other name of the same tensors in ``state`` (a module's state dict):
    ResEncUNet names its layers twice (``convs.0.conv`` is ``convs.0.all_modules.0``) and its
    decoder holds the encoder, so a tensor loaded or inflated under one name is under all."""
    pointers = {state[k].data_ptr() for k in names if k in state}
    return {k for k, v in state.items() if v.data_ptr() in pointers}


def pretext_kind(ckpt):
    """A pretraining run's model (``meta.task`` "ssl") is an encoder to fine-tune, whatever its keys:
    a Volume Fusion or MAE model has a decoder, but no segmentation decoder to keep. The engine
    marks only checkpoints with BrainSegFounder's SSL head keys as kind "ssl"; this marks the rest."""
    if ckpt.meta is not None and ckpt.meta.task == "ssl":
        ckpt.kind = "ssl"
    return ckpt


def inflate(
    kernel,
    source_modalities: Optional[Sequence[str]],
    target_modalities: Sequence[str],
    axis: int = 1,
    scale: bool = True,
):
    """Channels of ``kernel`` along ``axis`` (C_src) -> one per target modality (C_new): the
    source's channel of the same modality where known, else the mean over the source channels.
    Input kernels (axis 1) are scaled by C_src / C_new so the summed response keeps its size;
    output rows (axis 0, e.g. a reconstruction layer) are not scaled."""
    import torch

    c_src, c_new = kernel.shape[axis], len(target_modalities)
    mean = kernel.mean(dim=axis)
    src = [canonical(m) or m for m in source_modalities] if source_modalities else []
    columns, how = [], []
    for modality in target_modalities:
        if modality in src and len(src) == c_src:
            columns.append(kernel.select(axis, src.index(modality)))
            how.append(f"{modality}<-{modality}")
        else:
            columns.append(mean)
            how.append(f"{modality}<-mean")
    return torch.stack(columns, dim=axis) * (c_src / c_new if scale else 1.0), ", ".join(how)
