"""torchvision's detectors (Faster R-CNN, RetinaNet, FCOS, Mask R-CNN) on our FPNs: build, load, save.

We write no detector: :func:`detector` hands one of our registered FPNs (every family: ResNet,
VGG, GoogLeNet, Inception) to torchvision's own detection class, with the anchors sized from the
FPN's ``feature_info`` (each level's stride), torchvision's body conventions (frozen BatchNorm and
``trainable_layers`` when weights are loaded, every stage training with BatchNorm otherwise) and the
extra pyramid levels each kind expects (``pool`` for the R-CNNs, P6/P7 for RetinaNet and FCOS).

A detector saved by :func:`save_detector` is a folder of ``config.json`` (a ``"detector"`` object:
everything needed to rebuild it, and the weights' sha256) and ``model.safetensors`` (the whole
detector's state dict); ``detector(folder)`` rebuilds and loads it, verifying the file.

Example:
    >>> model = backbones.detector("resnet18_fpn", "retinanet", num_classes=11, min_size=128, max_size=128)
    >>> model.eval()([torch.rand(3, 120, 100)])[0].keys()
    dict_keys(['boxes', 'scores', 'labels'])
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch.nn as nn
from torch import Tensor

from backbones.core.references import CONFIG_NAME, WEIGHTS_NAME
from backbones.core.registry import UnknownModelError, get_model_entry, split_model_name

__all__ = [
    "COCO_DETECTOR_WEIGHTS",
    "DETECTOR_KINDS",
    "detector",
    "detector_config_from_folder",
    "load_torchvision_detector_state",
    "save_detector",
]

DETECTOR_KINDS = ("fasterrcnn", "retinanet", "fcos", "maskrcnn")

# torchvision's COCO detectors on ResNet-50 + FPN (the layout of our resnet50_fpn), by kind: the
# manifest's arch.tag for Faster R-CNN (its one entry) and torchvision's own files for the others,
# with the sha256 prefix their names carry (tests/test_detection_models.py checks them against
# torchvision's weight enums).
COCO_DETECTOR_WEIGHTS: dict[str, str] = {
    "fasterrcnn": "resnet50_fpn.tv_coco",
    "maskrcnn": "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    "retinanet": "https://download.pytorch.org/models/retinanet_resnet50_fpn_coco-eeacb38b.pth",
    "fcos": "https://download.pytorch.org/models/fcos_resnet50_fpn_coco-99b0c9b7.pth",
}
_COCO_TAG = "tv_coco"
_COCO_ARCH = "resnet50_fpn"
_COCO_CLASSES = 91

# What each kind takes from the FPN, as torchvision's own builders: the R-CNNs use C2..C5 and a
# max-pooled level; RetinaNet and FCOS use C3..C5 and P6/P7 convolved from P5.
_PYRAMID: dict[str, dict[str, Any]] = {
    "fasterrcnn": {"returned_layers": [1, 2, 3, 4], "extra_blocks": "pool"},
    "maskrcnn": {"returned_layers": [1, 2, 3, 4], "extra_blocks": "pool"},
    "retinanet": {"returned_layers": [2, 3, 4], "extra_blocks": "p6p7"},
    "fcos": {"returned_layers": [2, 3, 4], "extra_blocks": "p6p7"},
}
# Anchor side per level as a multiple of the level's stride: torchvision's anchors (32..512 on
# strides 4..64 for the R-CNNs, 32..512 on 8..128 for RetinaNet, the stride itself for FCOS).
_ANCHOR_PER_STRIDE = {"fasterrcnn": 8, "maskrcnn": 8, "retinanet": 4, "fcos": 1}
# Options that have no JSON form (modules, callables) cannot be saved; everything else may.
_CONFIG_VERSION = 1
_MAX_CLASSES = 100_000


# ----------------------------------------------------------------------------- anchors


def anchor_layout(kind: str, strides: list[int]) -> tuple[list[list[int]], list[list[float]]]:
    """torchvision's anchor sizes and aspect ratios for ``kind`` on pyramid levels of these strides.

    Args:
        kind: One of :data:`DETECTOR_KINDS`.
        strides: Each pyramid level's stride, finest first (the FPN's ``feature_info``).

    Returns:
        ``(sizes, aspect_ratios)``, one list per level: one size per level for the R-CNNs and
        FCOS, three octave scales (2^0, 2^(1/3), 2^(2/3)) for RetinaNet; ratios 0.5, 1, 2 except
        FCOS's single square anchor.
    """
    base = [_ANCHOR_PER_STRIDE[kind] * s for s in strides]
    if kind == "retinanet":
        sizes = [[b, int(b * 2 ** (1.0 / 3)), int(b * 2 ** (2.0 / 3))] for b in base]
    else:
        sizes = [[b] for b in base]
    ratios = [[1.0] if kind == "fcos" else [0.5, 1.0, 2.0] for _ in strides]
    return sizes, ratios


# ----------------------------------------------------------------------------- building


def _check_kind(kind: Any) -> str:
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, DETECTOR_KINDS))}, got {kind!r}")
    return kind


def _check_fpn_name(name: str) -> str:
    arch, tag = split_model_name(name)
    entry = get_model_entry(arch)
    if entry.kind != "fpn":
        fpn = f"{arch}_fpn"
        try:
            get_model_entry(fpn)
            hint = f"; its FPN is {fpn!r}"
        except UnknownModelError:
            hint = ""
        raise ValueError(f"a detector is built on an FPN, and {arch!r} is a {entry.kind}{hint}")
    if tag is not None:
        raise ValueError(
            f"a detector takes the FPN's architecture name ({arch!r}); give weights with "
            f"pretrained={tag!r} (the whole detector) or pretrained_backbone=... (the body)"
        )
    return arch


def _json_ready(value: Any, name: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        raise TypeError(
            f"detector option {name}={value!r} has no JSON form, so the detector could not be saved or rebuilt; "
            f"pass numbers, strings and lists"
        ) from None


def _build(config: dict[str, Any]) -> nn.Module:
    """The detector ``config`` describes, freshly initialised (no weights loaded)."""
    from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    from backbones.models.factory import create_model

    kind = config["kind"]
    backbone = create_model(
        config["backbone"],
        returned_layers=config["returned_layers"],
        extra_blocks=config["extra_blocks"],
        norm_layer=config["norm_layer"],
        trainable_layers=config["trainable_layers"],
        backbone_pretrained=config.get("pretrained_backbone") or False,
    )
    anchors = AnchorGenerator(
        tuple(tuple(s) for s in config["anchor_sizes"]), tuple(tuple(r) for r in config["aspect_ratios"])
    )
    common = {
        "min_size": config["min_size"],
        "max_size": config["max_size"],
        "image_mean": config["image_mean"],
        "image_std": config["image_std"],
        **config["detector_kwargs"],
    }
    if kind in ("fasterrcnn", "maskrcnn"):
        # RoI pooling on the pyramid levels proper (not the max-pooled one), as torchvision's default.
        levels = [f.name for f in backbone.feature_info if f.module != "fpn.extra_blocks"]
        heads: dict[str, Any] = {
            "rpn_anchor_generator": anchors,
            "box_roi_pool": MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        }
        if kind == "maskrcnn":
            heads["mask_roi_pool"] = MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2)
        cls = FasterRCNN if kind == "fasterrcnn" else MaskRCNN
        model = cls(backbone, num_classes=config["num_classes"], **heads, **common)
    else:
        cls = RetinaNet if kind == "retinanet" else FCOS
        model = cls(backbone, num_classes=config["num_classes"], anchor_generator=anchors, **common)
    model.detector_config = config
    return model


def _detector_config(
    name: str,
    kind: str,
    *,
    num_classes: int,
    trained: bool,
    pretrained_backbone: bool | str,
    trainable_layers: int,
    min_size: int,
    max_size: int,
    image_mean: list[float] | None,
    image_std: list[float] | None,
    class_names: list[str] | None,
    detector_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Everything :func:`_build` needs, as JSON: the FPN, the kind, the anchors, the transform."""
    import torch

    from backbones.models.factory import create_model

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= _MAX_CLASSES:
        raise ValueError(
            f"num_classes must be an int from 2 to {_MAX_CLASSES:,} (the classes plus background), got {num_classes!r}"
        )
    for option, value in (("min_size", min_size), ("max_size", max_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{option} must be a positive int (pixels), got {value!r}")
    if max_size < min_size:
        raise ValueError(f"max_size ({max_size}) must be at least min_size ({min_size})")
    pyramid = _PYRAMID[kind]
    with torch.device("meta"):  # only the shapes: which levels, which strides, which defaults
        probe = create_model(name, returned_layers=pyramid["returned_layers"], extra_blocks=pyramid["extra_blocks"])
    if min_size < probe.min_input_size:
        raise ValueError(f"min_size must be at least {probe.min_input_size} for {name}, got {min_size}")
    extra = dict(detector_kwargs)
    sizes, ratios = anchor_layout(kind, [f.stride for f in probe.feature_info])
    sizes = extra.pop("anchor_sizes", sizes)
    ratios = extra.pop("aspect_ratios", ratios)
    cfg = probe.pretrained_cfg
    return {
        "version": _CONFIG_VERSION,
        "backbone": name,
        "kind": kind,
        "num_classes": num_classes,
        "class_names": _json_ready(class_names, "class_names"),
        "min_size": min_size,
        "max_size": max_size,
        "image_mean": _json_ready(list(image_mean if image_mean is not None else cfg["mean"]), "image_mean"),
        "image_std": _json_ready(list(image_std if image_std is not None else cfg["std"]), "image_std"),
        # torchvision's convention: loaded weights keep their BatchNorm statistics fixed and train the
        # last stages only; a body from scratch trains every stage with BatchNorm (a frozen random
        # stage, or frozen initial statistics, would never learn).
        "norm_layer": "frozen_batchnorm" if trained else None,
        "trainable_layers": trainable_layers if trained else None,
        "returned_layers": pyramid["returned_layers"],
        "extra_blocks": pyramid["extra_blocks"],
        "anchor_sizes": _json_ready(sizes, "anchor_sizes"),
        "aspect_ratios": _json_ready(ratios, "aspect_ratios"),
        "detector_kwargs": {key: _json_ready(value, key) for key, value in extra.items()},
        "pretrained_backbone": pretrained_backbone if isinstance(pretrained_backbone, (bool, str)) else False,
    }


def detector(
    name_or_folder: str | Path,
    kind: str = "fasterrcnn",
    *,
    num_classes: int = 91,
    pretrained: str | Path | None = None,
    pretrained_backbone: bool | str = False,
    trainable_layers: int = 3,
    min_size: int = 800,
    max_size: int = 1333,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
    **detector_kwargs: Any,
) -> nn.Module:
    """torchvision's Faster R-CNN, RetinaNet, FCOS or Mask R-CNN on one of our FPNs, or a saved one.

    Args:
        name_or_folder: A registered FPN (``"resnet50_fpn"``, ``"vgg16_fpn"``, ...), or a folder
            written by :func:`save_detector` (then every other argument but ``kind`` must be left
            at its default; ``kind`` must agree with the saved one).
        kind: ``"fasterrcnn"``, ``"retinanet"``, ``"fcos"`` or ``"maskrcnn"``.
        num_classes: Classes including the background (COCO's 91 by default).
        pretrained: ``"tv_coco"``: torchvision's whole COCO detector of this kind on
            ``resnet50_fpn`` (head included), fetched and verified like any URL weights; or the
            path of a torchvision detector state-dict file. With another ``num_classes`` the
            class-dependent predictor layers stay freshly initialised (a warning says so).
        pretrained_backbone: ImageNet weights for the body (``True``, a tag or a path), like
            torchvision's ``weights_backbone``.
        trainable_layers: Body stages that train when weights are loaded (``pretrained`` or
            ``pretrained_backbone``), the earlier ones frozen with frozen BatchNorm; without weights
            every stage trains with ordinary BatchNorm, as torchvision's detectors do.
        min_size: Shorter image side after torchvision's resize.
        max_size: Longer side's cap after the resize.
        image_mean: Normalisation mean (default: the backbone's preprocessing, ImageNet's).
        image_std: Normalisation std (default: the backbone's).
        **detector_kwargs: Passed to the torchvision class (``box_score_thresh``,
            ``box_detections_per_img``, ...), JSON values only; ``anchor_sizes`` and
            ``aspect_ratios`` (one list per level) replace the anchors computed from the strides.

    Returns:
        The detector, in training mode, with ``detector_config`` (a JSON-able dict: backbone, kind,
        num_classes, class_names, sizes, anchors, ...: everything needed to rebuild it).

    Raises:
        ValueError: An unknown kind, a name that is not an FPN, an option out of range, or COCO
            weights asked for another backbone; the message names it.
        WeightsError: The weights cannot be fetched, are corrupt, or do not fit.
        ImportError: torchvision is not installed.
    """
    _require_torchvision()
    folder = _saved_folder(name_or_folder)
    if folder is not None:
        return _load_saved(folder, kind, locals())
    name = _check_fpn_name(str(name_or_folder))
    kind = _check_kind(kind)
    if pretrained is False:
        pretrained = None
    if pretrained is not None and str(pretrained) == _COCO_TAG and name != _COCO_ARCH:
        raise ValueError(
            f"pretrained='tv_coco' is torchvision's COCO detector on {_COCO_ARCH!r}; {name!r} has no COCO "
            f"detector weights (use pretrained_backbone=True for ImageNet weights of its body)"
        )
    trained = pretrained is not None or bool(pretrained_backbone)
    config = _detector_config(
        name,
        kind,
        num_classes=num_classes,
        trained=trained,
        # The COCO file holds the body too: no ImageNet download under it.
        pretrained_backbone=False if pretrained is not None else pretrained_backbone,
        trainable_layers=trainable_layers,
        min_size=min_size,
        max_size=max_size,
        image_mean=image_mean,
        image_std=image_std,
        class_names=_coco_class_names() if pretrained is not None and str(pretrained) == _COCO_TAG else None,
        detector_kwargs=detector_kwargs,
    )
    if config["class_names"] is not None and len(config["class_names"]) != num_classes:
        config["class_names"] = None  # the COCO names name the COCO head only
    model = _build(config)
    if pretrained is not None:
        state, what = _read_detector_weights(kind, pretrained)
        load_torchvision_detector_state(model, state, what=what, reinit_head=num_classes != _COCO_CLASSES)
    return model


def _require_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        raise ImportError("detection needs torchvision; install it with `pip install torchvision`") from None


def _coco_class_names() -> list[str]:
    from backbones.hub.manifest import class_names

    return list(class_names("coco"))


# ----------------------------------------------------------------------------- weights


def _read_detector_weights(kind: str, pretrained: str | Path) -> tuple[dict[str, Tensor], str]:
    """The torchvision-layout detector state dict ``pretrained`` names, and its name for messages."""
    from backbones.hub.download import fetch_url_file
    from backbones.hub.loading import read_state_dict
    from backbones.hub.manifest import get_weight_spec

    if str(pretrained) != _COCO_TAG:
        path = Path(pretrained).expanduser()
        return read_state_dict(path, str(path)), str(path)
    source = COCO_DETECTOR_WEIGHTS[kind]
    if source.startswith("https://"):
        what = f"{_COCO_ARCH} {kind} {_COCO_TAG}"
        digest = re.search(r"-([0-9a-f]{8,})\.pth$", source)
        url, sha256 = source, digest.group(1) if digest else None
    else:
        spec = get_weight_spec(*source.split("."))
        what, url, sha256 = spec.name, spec.url, spec.sha256
    if url is None:
        raise ValueError(f"{what}: the manifest gives no URL for torchvision's detector file")
    path = fetch_url_file(url, sha256=sha256, what=what)
    return read_state_dict(path, what), what


# The FPN's 2019 keys (inner_blocks.0.weight) as our FPN spells them (inner_blocks.0.0.weight); the
# heads' old keys are torchvision's to convert, which its modules do when loading a plain dict.
_LEGACY_FPN_KEY = re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$")
# Tensors whose first dimension counts classes (or classes x 4 box deltas, or anchors x classes).
_CLASS_DEPENDENT = re.compile(
    r"^(roi_heads\.box_predictor\.(cls_score|bbox_pred)|roi_heads\.mask_predictor\.mask_fcn_logits"
    r"|head\.classification_head\.cls_logits)\.(weight|bias)$"
)


def load_torchvision_detector_state(
    model: nn.Module, state_dict: dict[str, Tensor], *, what: str = "the detector weights", reinit_head: bool = False
) -> None:
    """Load a torchvision detector's state dict (``fasterrcnn_resnet50_fpn().state_dict()``, head and all) into ours.

    The backbone's keys are torchvision's already (``backbone.body.*``, ``backbone.fpn.*``);
    the FPN's pre-0.13 keys are renamed, BatchNorm step counters that a frozen BatchNorm has no
    use for are dropped, and the heads' older layouts are converted by torchvision's own modules.

    Args:
        model: A detector built by :func:`detector` of the same kind and layout.
        state_dict: The torchvision detector's weights.
        what: The weights' name, for messages.
        reinit_head: Keep the model's freshly initialised class-dependent predictor layers where
            their shapes differ from the checkpoint's (another ``num_classes``), with a warning.

    Raises:
        WeightsMismatchError: Keys are missing or unexpected, or shapes differ; the message names them.
        WeightsIntegrityError: A tensor holds NaN/inf or a negative variance.
    """
    from backbones.hub.loading import WeightsMismatchError, check_weight_values

    own = model.state_dict()
    state = {_LEGACY_FPN_KEY.sub(r"\1.0.\2", k): v for k, v in state_dict.items()}
    state = {k: v for k, v in state.items() if not (k.endswith(".num_batches_tracked") and k not in own)}
    check_weight_values(state, own, what)
    mismatched = sorted(k for k in state.keys() & own.keys() if state[k].shape != own[k].shape)
    if reinit_head:
        replaced = [k for k in mismatched if _CLASS_DEPENDENT.match(k)]
        if replaced:
            warnings.warn(
                f"{what}: the class-dependent layers {', '.join(sorted({k.rsplit('.', 1)[0] for k in replaced}))} "
                f"are freshly initialised (the checkpoint's are for another number of classes)",
                stacklevel=2,
            )
        state.update({k: own[k] for k in replaced})
        mismatched = [k for k in mismatched if k not in replaced]
    if mismatched:
        shapes = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:6])
        raise WeightsMismatchError(
            f"{what} does not fit this {type(model).__name__} (shape mismatches: {shapes}); build the detector with "
            f"the checkpoint's backbone, kind and num_classes"
        )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing keys: {', '.join(result.missing_keys[:6])}")
        if result.unexpected_keys:
            parts.append(f"unexpected keys: {', '.join(result.unexpected_keys[:6])}")
        raise WeightsMismatchError(
            f"{what} does not fit this {type(model).__name__} ({'; '.join(parts)}); build the detector with the "
            f"checkpoint's backbone and kind"
        )


# ----------------------------------------------------------------------------- saved folders


def save_detector(model: nn.Module, folder: str | Path, extra_config: dict[str, Any] | None = None) -> Path:
    """Write a detector built by :func:`detector` as ``config.json`` + ``model.safetensors``, atomically.

    ``config.json`` holds ``{"detector": model.detector_config, "weights_sha256": ...,
    "library_name": "backbones", "backbones_version": ..., **extra_config}``; the folder is written
    beside the target and swapped in whole (files of the old folder that this does not write, a
    ``metrics.jsonl``, are kept).

    Args:
        model: The detector (its ``detector_config`` says how to rebuild it).
        folder: Where to write (created; an existing one is replaced).
        extra_config: More top-level JSON fields for ``config.json`` (metrics, the training recipe).

    Returns:
        The folder.

    Raises:
        ValueError: The model has no ``detector_config``, or ``extra_config`` would replace a field
            the loader reads or is not JSON.
    """
    from backbones.core.files import atomic_directory, save_safetensors_atomic
    from backbones.core.version import __version__
    from backbones.hub.integrity import file_sha256

    config = getattr(model, "detector_config", None)
    if not isinstance(config, dict):
        raise ValueError(
            f"this {type(model).__name__} has no detector_config (it was not built by backbones.detector); build "
            f"it with backbones.detector(...) to save it"
        )
    extra = dict(extra_config or {})
    reserved = sorted(extra.keys() & {"detector", "weights_sha256", "library_name", "backbones_version"})
    if reserved:
        raise ValueError(f"extra_config may not set {', '.join(reserved)}: save_detector writes those")
    content: dict[str, Any] = {
        "detector": _json_ready(config, "detector_config"),
        "library_name": "backbones",
        "backbones_version": __version__,
        **_json_ready(extra, "extra_config"),
    }
    folder = Path(folder).expanduser()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(folder) as tmp:
        save_safetensors_atomic(state, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        content["weights_sha256"] = file_sha256(tmp / WEIGHTS_NAME)
        (tmp / CONFIG_NAME).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return folder


def _saved_folder(name_or_folder: str | Path) -> Path | None:
    """The folder ``name_or_folder`` names when it is one (holding ``config.json``), else ``None``."""
    path = Path(name_or_folder).expanduser()
    if not path.is_dir():
        if isinstance(name_or_folder, Path) or str(name_or_folder).startswith((".", "/", "~")):
            raise FileNotFoundError(f"there is no folder {path}; give a folder written by save_detector or an FPN name")
        return None
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_NAME}; give a folder written by save_detector")
    return path


def detector_config_from_folder(folder: str | Path) -> dict[str, Any]:
    """Read and check the ``"detector"`` object of a saved detector's ``config.json``.

    Raises:
        ValueError: The file is not JSON, has no ``"detector"`` object, or a field is missing or
            wrong; the message names the file and the field.
    """
    path = Path(folder).expanduser() / CONFIG_NAME
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    config = content.get("detector") if isinstance(content, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{path} has no 'detector' object: it was not written by save_detector")
    _check_saved_config(config, str(path))
    return config


_CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "backbone": (str,),
    "kind": (str,),
    "num_classes": (int,),
    "min_size": (int,),
    "max_size": (int,),
    "image_mean": (list,),
    "image_std": (list,),
    "returned_layers": (list,),
    "extra_blocks": (str, type(None)),
    "norm_layer": (str, type(None)),
    "trainable_layers": (int, type(None)),
    "anchor_sizes": (list,),
    "aspect_ratios": (list,),
    "detector_kwargs": (dict,),
}


def _check_saved_config(config: dict[str, Any], where: str) -> None:
    from backbones.core.options import check_model_options

    for key, types in _CONFIG_FIELDS.items():
        if key not in config:
            raise ValueError(f"{where}: the 'detector' object has no {key!r}; save the detector again")
        if not isinstance(config[key], types) or isinstance(config[key], bool):
            raise ValueError(f"{where}: 'detector.{key}' has the wrong type ({type(config[key]).__name__})")
    _check_kind(config["kind"])
    _check_fpn_name(config["backbone"])
    if not 2 <= config["num_classes"] <= _MAX_CLASSES:
        raise ValueError(f"{where}: 'detector.num_classes' must be from 2 to {_MAX_CLASSES:,}")
    names = config.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"{where}: 'detector.class_names' must be a list of strings or null")
    numbers = [*config["image_mean"], *config["image_std"]]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
        raise ValueError(f"{where}: 'detector.image_mean' and 'image_std' must be lists of numbers")
    check_model_options(
        {k: config[k] for k in ("returned_layers", "extra_blocks", "norm_layer", "trainable_layers")}, source=where
    )


_DETECTOR_DEFAULTS = {
    "num_classes": 91,
    "pretrained": None,
    "pretrained_backbone": False,
    "trainable_layers": 3,
    "min_size": 800,
    "max_size": 1333,
    "image_mean": None,
    "image_std": None,
}


def _load_saved(folder: Path, kind: str, arguments: dict[str, Any]) -> nn.Module:
    """Rebuild the detector of a :func:`save_detector` folder and load its verified weights."""
    from backbones.hub.loading import read_state_dict
    from backbones.models.pretrained import _check_saved_weights

    changed = [k for k, v in _DETECTOR_DEFAULTS.items() if arguments[k] != v and arguments[k] is not False]
    changed += sorted(arguments["detector_kwargs"])
    if changed:
        raise ValueError(
            f"{folder} is a saved detector, built as saved; drop {', '.join(changed)} (they apply when building "
            f"from an FPN name)"
        )
    config = detector_config_from_folder(folder)
    if kind not in ("fasterrcnn", config["kind"]):
        raise ValueError(f"{folder} holds a {config['kind']} detector, not a {kind}; drop kind or pass its own")
    content = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}; save the detector again with save_detector")
    digest = content.get("weights_sha256")
    if not isinstance(digest, str):
        raise ValueError(f"{folder / CONFIG_NAME} has no 'weights_sha256'; save the detector again with save_detector")
    _check_saved_weights(weights, digest)
    # The saved file holds the body's weights: rebuilding must not fetch ImageNet weights again.
    model = _build({**config, "pretrained_backbone": False})
    model.detector_config = config
    state = read_state_dict(weights, str(weights))
    load_torchvision_detector_state(model, state, what=str(folder))
    return model
