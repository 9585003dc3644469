"""MONAI bundles: any of our models out as a bundle, a bundle whose network is one of ours in.

Written and read with MONAI's bundle API (``ConfigParser``, ``verify_metadata``); the
exported ``configs/inference.json`` runs under MONAI's own runner (``python -m monai.bundle run``)
and reproduces ``brainsegfounder segment`` step for step: reorientation to the model's axes,
resampling to its voxel size where it records one, the crop to the brain (4 voxels of margin),
the per-channel z-score over the brain, the sliding window (the model's ROI, overlap 0.5,
gaussian blending), the sigmoid, the probabilities back on the input's grid, the threshold, the
labels only where an input is nonzero, and the BraTS label values.

A bundle's configs are code (MONAI evaluates their ``$`` expressions and instantiates any
``_target_``), so an imported bundle's configs are read as data only: the network is rebuilt
from its ``network_def`` by our own builders, and its weights are loaded with
``weights_only=True``. The metadata is verified offline against the bundle specification's
required fields (``bundle_metadata_schema.json``, shipped beside this module).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple

from .atomic import atomic_path
from .checkpoints import ModelMeta, load_checkpoint, load_strict, read_checkpoint_file, resolve_meta, state_payload
from .errors import UserError
from .labels import et_label, schema
from .modalities import canonical
from .networks import ResEncUNetConfig, SwinUNETRConfig, build_network
from .registry import UNKNOWN_LICENCE, register_model, resolve_model

SCHEMA_FILE = Path(__file__).with_name("bundle_metadata_schema.json")
# What metadata.json names as its schema: the one the MONAI model zoo validates against.
ZOO_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
CHANNEL_NAMES = {"flair": "FLAIR", "t1ce": "T1c", "t1": "T1", "t2": "T2"}  # as MONAI's BraTS bundle writes them
MAX_UNPACKED = 8 * 2**30  # a bundle zip larger than this unpacked is refused (a model is a few hundred MB)
OVERLAP = 0.5  # segment's default (InferenceSettings.overlap)


# -- export ------------------------------------------------------------------------------------


def export_bundle(model: str, out: os.PathLike, overwrite: bool = False) -> Path:
    """Write ``model`` (a registry name or a checkpoint path) as a MONAI bundle in folder ``out``."""
    import monai
    import numpy
    import torch

    path = resolve_model(model)
    ckpt = load_checkpoint(path)
    if ckpt.is_encoder_only or ckpt.is_pretext:
        raise UserError(f"{path.name} is a pretraining model, not a segmentation model; export a fine-tuned one")
    meta = resolve_meta(ckpt)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} exists and is not empty; choose a new folder or add --overwrite")
    licence = _licence_of(path, meta)
    network_def, packages = _network_def(meta)
    metadata = {
        "schema": ZOO_SCHEMA_URL,
        "version": _semver(meta.version),
        "changelog": {_semver(meta.version): f"exported by brainsegfounder from {path.name}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"nibabel": _version("nibabel"), **packages},
        "name": meta.name,
        "task": meta.task or meta.label_schema,
        "description": meta.description or f"{meta.network.summary()} ({meta.label_schema})",
        "authors": meta.provenance.get("authors", "brainsegfounder model (see docs/README.md)"),
        "copyright": meta.provenance.get("copyright", "see LICENSE"),
        "license": licence,
        "data_source": meta.provenance.get("data", meta.trained_on or "not recorded"),
        "network_data_format": _data_format(meta),
        "brainsegfounder": meta.to_dict(),  # our own metadata, so an import loses nothing
    }
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=_parent(out)) as tmp:
        stage = Path(tmp)
        (stage / "configs").mkdir()
        (stage / "models").mkdir()
        (stage / "docs").mkdir()
        (stage / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        (stage / "configs" / "inference.json").write_text(json.dumps(_inference(meta, network_def), indent=2) + "\n")
        torch.save(ckpt.state_dict, stage / "models" / "model.pt")
        (stage / "docs" / "README.md").write_text(_readme(meta, path.name, licence, packages))
        (stage / "LICENSE").write_text(f"{licence}\n")
        verify(stage)
        aside = stage.with_name(stage.name + "-old")
        if out.exists():  # --overwrite: the old bundle goes only once the new one is in place
            out.replace(aside)
        stage.replace(out)
        shutil.rmtree(aside, ignore_errors=True)
        stage.mkdir()  # for TemporaryDirectory's clean-up
    return out


def _parent(out: Path) -> Path:
    parent = out.resolve().parent
    if not parent.is_dir():
        raise UserError(f"the folder {parent} does not exist; create it or choose another --out")
    return parent


def _licence_of(path: Path, meta: ModelMeta) -> str:
    from .registry import local_model_task

    return local_model_task(path, "license") or meta.provenance.get("license") or UNKNOWN_LICENCE


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _semver(version: str) -> str:
    """The bundle specification wants MAJOR.MINOR.PATCH; our versions are free text."""
    parts = [p for p in version.replace("-", ".").split(".") if p.isdigit()][:3]
    return ".".join(parts + ["0"] * (3 - len(parts)))


def _network_def(meta: ModelMeta) -> Tuple[dict, Dict[str, str]]:
    """(network_def, packages it needs beyond MONAI): MONAI's own SwinUNETR where it computes the
    model's function (merge order monai1.5, MONAI >= 1.5), dynamic-network-architectures' ResEnc
    U-Net as we build it, else our builder (BrainSegFounder's monai0.9 order, PCT-Net)."""
    net = meta.network
    if isinstance(net, SwinUNETRConfig) and net.merge_order == "monai1.5":
        return {
            "_target_": "SwinUNETR",
            "in_channels": net.in_channels,
            "out_channels": net.out_channels,
            "patch_size": net.patch_size,
            "depths": list(net.depths),
            "num_heads": list(net.num_heads),
            "window_size": net.window_size,
            "feature_size": net.feature_size,
            "norm_name": net.norm_name,
            "spatial_dims": 3,
            "downsample": net.downsample,
            "use_v2": net.use_v2,
        }, {}
    if isinstance(net, ResEncUNetConfig):
        stages = len(net.blocks_per_stage)
        return {
            "_target_": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
            "input_channels": net.in_channels,
            "n_stages": stages,
            "features_per_stage": list(net.features_per_stage),
            "conv_op": "$torch.nn.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * stages,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
            "n_blocks_per_stage": list(net.blocks_per_stage),
            "num_classes": net.out_channels,
            "n_conv_per_stage_decoder": [1] * (stages - 1),
            "conv_bias": True,
            "norm_op": "$torch.nn.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "nonlin": "$torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
            "deep_supervision": False,
        }, {"dynamic-network-architectures": _version("dynamic-network-architectures")}
    return {"_target_": "brainsegfounder.networks.network_from_settings", "settings": net.to_dict()}, {
        "brainsegfounder": _version("brainsegfounder")
    }


def _data_format(meta: ModelMeta) -> dict:
    roi = list(meta.roi_size)
    regions = schema(meta.label_schema).channels
    return {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": "MR",
                "num_channels": len(meta.modalities),
                "spatial_shape": roi,
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": True,
                "channel_def": {str(i): CHANNEL_NAMES.get(m, m) for i, m in enumerate(meta.modalities)},
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "segmentation",
                "num_channels": len(regions),
                "spatial_shape": roi,
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {str(i): name for i, name in enumerate(regions)},
            }
        },
    }


def _labels_expression(meta: ModelMeta) -> str:
    """The label map from the thresholded region channels ``r`` (C, ...), as ``segment`` writes it."""
    if meta.label_schema == "brats_regions":  # TC, WT, ET -> NCR 1, edema 2, ET (4: BraTS 2021 numbering)
        return f"torch.where(r[2], {et_label('brats2021')}, torch.where(r[0], 1, torch.where(r[1], 2, 0)))"
    # one channel per label value, a later channel winning where they overlap
    return "(torch.arange(1, r.shape[0] + 1).view(-1, *[1] * (r.dim() - 1)) * r).amax(0)"


def _inference(meta: ModelMeta, network_def: dict) -> dict:
    load = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        {"_target_": "CopyItemsd", "keys": "image", "names": "input"},  # the input's grid, for the labels
        {"_target_": "Orientationd", "keys": "image", "axcodes": meta.orientation},
    ]
    if meta.spacing_mm:
        load.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(meta.spacing_mm), "mode": "bilinear"})
    load += [
        {
            "_target_": "CropForegroundd",
            "keys": "image",
            "source_key": "image",
            "select_fn": "$lambda x: x != 0",
            "margin": 4,
            "allow_smaller": True,
        },
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
    ]
    labels = (
        "$lambda d: {**d, 'pred': (lambda r: (" + _labels_expression(meta) + ").to(torch.uint8)[None])"
        "((d['pred'] > 0.5) & (d['input'] != 0).any(0, keepdim=True))}"
    )
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "/workspace/data",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$[{'image': sorted(glob.glob(os.path.join(@dataset_dir, '*')))}]",
        "channel_order": list(meta.modalities),
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": load},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(meta.roi_size),
            "sw_batch_size": 1,
            "overlap": OVERLAP,
            "mode": "gaussian",
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                # probabilities back on the input's grid (linear where resampled), then thresholded
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "Lambda", "func": labels},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_dtype": "$numpy.uint8",
                    "resample": False,
                    "separate_folder": False,
                    "print_log": False,
                },
            ],
        },
        "checkpoint": "$torch.load(@bundle_root + '/models/model.pt', map_location=@device, weights_only=True)",
        "run": [
            "$@network.load_state_dict(@checkpoint)",
            "$@network.eval()",
            "$torch.set_grad_enabled(False)",
            "$[@postprocessing({**d, 'pred': @inferer(d['image'][None].to(@device), @network)[0].cpu()}) "
            "for d in @dataset]",
        ],
    }


def _readme(meta: ModelMeta, source: str, licence: str, packages: Dict[str, str]) -> str:
    order = ", ".join(f"{i}: {m}" for i, m in enumerate(meta.modalities))
    needs = ", ".join(["MONAI", "nibabel", "fire (MONAI's command line)", *packages])
    return f"""# {meta.name}

{meta.description or meta.network.summary()}

Exported by brainsegfounder from `{source}` (version {meta.version}, trained on: {meta.trained_on or "not recorded"}).

## Inputs and outputs

- Input: {len(meta.modalities)} MR images of one case, in this channel order: {order}; any voxel size
  (the network runs at {meta.spacing_mm or "the input's own"} mm, orientation {meta.orientation}).
- Output: a label map on the input's grid ({meta.label_schema}; BraTS 2021 values: 1 necrosis,
  2 edema, 4 enhancing tumour), written to `eval/`.

## Run

Put the case's files in one folder, named so that they sort in the channel order above (e.g.
`0_flair.nii.gz`, `1_t1ce.nii.gz`, ...), then:

```bash
python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
    --bundle_root . --dataset_dir CASE_FOLDER
```

Needs: {needs}. `brainsegfounder models import-bundle` takes the bundle back into a model registry.

## Licence

{licence}
"""


def verify(folder: os.PathLike) -> dict:
    """The bundle's metadata, verified against the bundle specification's required fields
    (offline: the schema file ships with brainsegfounder); one clear error when it fails."""
    from monai.bundle import ConfigParser, verify_metadata

    folder = Path(folder)
    for part in ("configs/metadata.json", "configs/inference.json", "models/model.pt"):
        if not (folder / part).is_file():
            raise UserError(f"{folder} is not a MONAI bundle: it has no {part}")
    meta_file = folder / "configs" / "metadata.json"
    try:
        metadata = ConfigParser.load_config_file(meta_file)
    except Exception as error:
        raise UserError(f"cannot read {meta_file} ({type(error).__name__}); the bundle is damaged") from None
    if not isinstance(metadata, dict) or "schema" not in metadata:
        raise UserError(f"{meta_file} names no schema; it is not a MONAI bundle's metadata")
    try:  # an existing schema file is used as it is (MONAI downloads only a missing one)
        with _quiet_monai():
            verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA_FILE))
    except ValueError as error:
        first = str(error).strip().splitlines()[0][:300]
        raise UserError(f"{meta_file} does not follow the MONAI bundle specification: {first}") from None
    return metadata


@contextlib.contextmanager
def _quiet_monai():
    """MONAI's bundle scripts log their arguments and warn that a local schema has no hash: not
    the user's concern in a one-line CLI."""
    loggers = [logging.getLogger(name) for name in ("monai.bundle.scripts", "monai.apps")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# -- import ------------------------------------------------------------------------------------


def import_bundle(source: os.PathLike, name: Optional[str] = None, licence: Optional[str] = None) -> Path:
    """Register a bundle (a folder or a .zip) whose network is a SwinUNETR or a ResEnc U-Net (or
    any of ours, as ``export_bundle`` writes it) as a local model; returns its path."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source} does not exist; give a bundle folder or a .zip of one")
    with tempfile.TemporaryDirectory(prefix="bsf-bundle-") as tmp:
        folder = _unpack(source, Path(tmp)) if source.is_file() else source
        metadata = verify(folder)
        inference = _read_config(folder / "configs" / "inference.json")
        meta = _meta_from_bundle(metadata, inference, folder)
        model = _checked_weights(folder / "models" / "model.pt", meta)
        staged = Path(tmp) / f"{meta.name}.pt"
        import torch

        with atomic_path(staged) as out:
            torch.save(state_payload(model.state_dict(), meta), out)
        bundle_licence = licence or metadata.get("license") or _licence_file(folder)
        return register_model(staged, name or _plain(metadata.get("name") or folder.name), licence=bundle_licence)


def _unpack(zip_path: Path, into: Path) -> Path:
    """The bundle folder inside a zip, unpacked (archives.safe_extract: no zip slip, no zip bomb)."""
    from .archives import safe_extract

    root = safe_extract(zip_path, into, MAX_UNPACKED, str(zip_path))
    metas = sorted(root.glob("**/configs/metadata.json"), key=lambda p: len(p.parts))
    if not metas:
        raise UserError(f"{zip_path} holds no configs/metadata.json; it is not a MONAI bundle")
    return metas[0].parent.parent


def _read_config(path: Path) -> dict:
    from monai.bundle import ConfigParser

    try:
        config = ConfigParser.load_config_file(path)
    except Exception as error:
        raise UserError(f"cannot read {path} ({type(error).__name__}); the bundle is damaged") from None
    return config if isinstance(config, dict) else {}


def _resolved(config: dict, value):
    """A config value with plain ``@id`` references to other values replaced, never evaluated:
    a bundle's ``$`` expressions are code and are not run here."""
    if isinstance(value, str) and value.startswith("@") and value[1:] in config:
        return _resolved(config, config[value[1:]])
    if isinstance(value, dict):
        return {k: _resolved(config, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(config, v) for v in value]
    return value


def _meta_from_bundle(metadata: dict, inference: dict, folder: Path) -> ModelMeta:
    ours = metadata.get("brainsegfounder")
    if isinstance(ours, dict):  # exported by us: the whole metadata travelled
        return ModelMeta.from_dict(ours)
    network = _network_from_def(_resolved(inference, inference.get("network_def")), metadata, folder)
    inputs = metadata["network_data_format"]["inputs"]
    image = inputs.get("image") or next(iter(inputs.values()))
    channels = image.get("channel_def", {})
    modalities = tuple(canonical(str(channels.get(str(i), ""))) for i in range(network.in_channels))
    if not all(modalities):
        raise UserError(
            f"{folder}: its input channels {channels} are not all MR contrasts this project knows "
            "(FLAIR, T1c, T1, T2); such a bundle cannot be imported"
        )
    outputs = metadata["network_data_format"]["outputs"]
    regions = [str(v) for v in (next(iter(outputs.values())).get("channel_def") or {}).values()]
    label_schema = "brats_regions" if [r.upper() for r in regions] == ["TC", "WT", "ET"] else None
    if label_schema is None and network.out_channels == 1:
        label_schema = "lesion"
    if label_schema is None:
        raise UserError(f"{folder}: its outputs {regions} are neither BraTS's TC/WT/ET regions nor one lesion channel")
    roi = _resolved(inference, inference.get("inferer", {})).get("roi_size") or image.get("spatial_shape")
    return ModelMeta(
        network=network,
        modalities=modalities,
        label_schema=label_schema,
        name=_plain(metadata.get("name") or folder.name),
        version=str(metadata.get("version", "0")),
        task="brats" if label_schema == "brats_regions" else "",
        roi_size=tuple(int(r) for r in roi),
        description=str(metadata.get("description", "")),
        provenance={"source": f"MONAI bundle {folder.name}", "authors": str(metadata.get("authors", ""))},
        trained_on="real",
    )


def _network_from_def(definition, metadata: dict, folder: Path):
    if not isinstance(definition, dict) or "_target_" not in definition:
        raise UserError(f"{folder}: configs/inference.json has no network_def with a _target_")
    target = str(definition["_target_"]).rsplit(".", 1)[-1]
    args = {k: v for k, v in definition.items() if not k.startswith("_")}
    if any(isinstance(v, str) and v.startswith("$") for k, v in args.items() if k not in _RESENC_OPS):
        raise UserError(f"{folder}: its network_def computes its settings with expressions; it cannot be read as data")
    try:
        if target == "SwinUNETR":
            # MONAI changed SwinUNETR's merge order in 1.5: a bundle made with an older MONAI used the old one
            older = [int(p) for p in str(metadata.get("monai_version", "1.5")).split(".")[:2]] < [1, 5]
            return SwinUNETRConfig(
                in_channels=int(args["in_channels"]),
                out_channels=int(args["out_channels"]),
                depths=tuple(args.get("depths", (2, 2, 2, 2))),
                num_heads=tuple(args.get("num_heads", (3, 6, 12, 24))),
                feature_size=int(args.get("feature_size", 24)),
                use_v2=bool(args.get("use_v2", False)),
                norm_name=str(args.get("norm_name", "instance")),
                patch_size=int(args.get("patch_size", 2)),
                window_size=int(args.get("window_size", 7)),
                merge_order="monai0.9" if older else "monai1.5",
            )
        if target == "ResidualEncoderUNet":
            config = ResEncUNetConfig(
                in_channels=int(args["input_channels"]),
                out_channels=int(args["num_classes"]),
                features_per_stage=tuple(args["features_per_stage"]),
                blocks_per_stage=tuple(args["n_blocks_per_stage"]),
            )
            if _resenc_def(config) != args:
                raise UserError(
                    f"{folder}: its ResidualEncoderUNet differs from the one this project builds "
                    "(kernels, strides, norm or nonlinearity); it cannot be imported"
                )
            return config
        if target == "network_from_settings":
            from .networks import ArchitectureConfig

            return ArchitectureConfig.from_dict(args["settings"])
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{folder}: its network_def is incomplete or malformed ({error})") from None
    raise UserError(
        f"{folder}: its network is {definition['_target_']}; only SwinUNETR and ResEnc U-Net bundles can be imported"
    )


_RESENC_OPS = ("conv_op", "norm_op", "nonlin")  # torch classes, written as $ expressions in a config


def _resenc_def(config: ResEncUNetConfig) -> dict:
    """The network_def settings export_bundle writes for ``config``."""
    definition = _network_def(ModelMeta(network=config, modalities=(), label_schema=""))[0]
    return {k: v for k, v in definition.items() if not k.startswith("_")}


def _checked_weights(path: Path, meta: ModelMeta):
    """The network of ``meta`` with the bundle's weights, loaded strictly (weights only)."""
    from .checkpoints import _strip_module_prefix, _tensor_dict

    obj = read_checkpoint_file(path)
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, dict) and _tensor_dict(obj.get(key)):
            obj = obj[key]
            break
    if not _tensor_dict(obj):
        raise UserError(f"{path} holds no state_dict of tensors; the bundle's model.pt must be one")
    network = build_network(meta.network)
    load_strict(network, _strip_module_prefix(obj), str(path))
    return network


def _licence_file(folder: Path) -> Optional[str]:
    licence = folder / "LICENSE"
    if licence.is_file():
        text = licence.read_text(errors="replace").strip()
        return text.splitlines()[0][:200] if text else None
    return None


def _plain(text: str) -> str:
    """A model name from free text: letters, digits, '-', '_' and '.' kept, anything else '-'."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text)).strip("-.")
    return name or "bundle"
