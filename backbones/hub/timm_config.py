"""``config.json`` in the layout timm reads, with ours beside it; and timm's folders read as ours.

A folder written by ``save_pretrained`` is read by timm (``timm.create_model("local-dir:DIR",
pretrained=True)`` or ``"hf-hub:owner/name"``) and so by the libraries that wrap timm. timm reads
``architecture``, ``num_classes``, ``num_features``, ``label_names``, ``model_args`` and a
``pretrained_cfg`` of its own fields at the top level of the file, and refuses a ``pretrained_cfg``
with any other field. So the file holds timm's view of the model at the top level and our whole
config, unchanged, under the ``"backbones"`` key::

    {"architecture": "resnet18", "num_classes": 10, "num_features": 512, "label_names": [...],
     "model_args": {"num_classes": 10}, "pretrained_cfg": {"input_size": [3, 32, 32], "crop_pct": 1.0, ...},
     "backbones": {"architecture": "resnet18", "model_kwargs": {...}, "pretrained_cfg": {...}, ...}}

Reading takes ``"backbones"`` when it is there and ignores timm's view (which is derived from it).
A file without it is either ours from before this layout (it has ``model_kwargs``) or timm's
own (``save_for_hf``), whose architecture, classes and preprocessing are read into ours: timm's
``crop_pct`` becomes a resize to ``floor(crop / crop_pct)`` then the crop, as timm does.

Example:
    >>> on_disk = file_layout(config, num_features=512)      # what save_pretrained writes
    >>> read_layout(on_disk, "config.json") == config
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["OUR_KEY", "TIMM_WEIGHTS_NAME", "file_layout", "read_layout", "timm_crop_pct"]

OUR_KEY = "backbones"
# timm's save_for_hf writes this file (and model.safetensors only when asked to).
TIMM_WEIGHTS_NAME = "pytorch_model.bin"
# Of the fields of timm's PretrainedCfg, those our pretrained_cfg has under the same name and meaning.
_SHARED_CFG_FIELDS = ("input_size", "test_input_size", "interpolation", "mean", "std", "num_classes", "license")
# timm's builder defaults where they differ from ours, so a timm folder's weights fit the network we build.
_TIMM_DEFAULT_ARGS: dict[str, dict[str, Any]] = {"inception_v3": {"aux_logits": False}}


def timm_crop_pct(crop_size: int, resize_size: int) -> float:
    """The ``crop_pct`` for which timm resizes to ``resize_size`` before a ``crop_size`` crop.

    timm resizes to ``floor(crop_size / crop_pct)``; the plain ratio can land a hair under the
    integer (299 / (299 / 342) is 341.99999...), so the ratio is nudged until the floor is right.

    Example:
        >>> timm_crop_pct(224, 256), timm_crop_pct(32, 32)
        (0.875, 1.0)
    """
    pct = crop_size / resize_size
    while math.floor(crop_size / pct) < resize_size:
        pct = math.nextafter(pct, 0.0)
    return pct


def file_layout(
    config: dict[str, Any], *, num_features: int | None = None, state_keys: Iterable[str] = ()
) -> dict[str, Any]:
    """What ``config.json`` holds for our ``config``: timm's keys at the top, ours under ``"backbones"``.

    Args:
        config: Our config (see :func:`backbones.models.pretrained.model_config_json`).
        num_features: The width of the pooled features before the classifier (timm's key).
        state_keys: The weights' keys: timm builds Inception-v3 without its auxiliary classifier
            and refuses weights that have one, unless the config says they are torchvision's.
    """
    cfg = config.get("pretrained_cfg") or {}
    kwargs = config.get("model_kwargs") or {}
    timm_cfg = {k: cfg[k] for k in _SHARED_CFG_FIELDS if cfg.get(k) is not None}
    if cfg.get("crop_size") and cfg.get("resize_size"):
        timm_cfg["crop_pct"] = timm_crop_pct(cfg["crop_size"], cfg["resize_size"])
        timm_cfg["crop_mode"] = "center"
    elif cfg.get("crop_pct") is not None:
        timm_cfg["crop_pct"] = cfg["crop_pct"]
    view: dict[str, Any] = {"architecture": config["architecture"]}
    num_classes = kwargs.get("num_classes", cfg.get("num_classes"))
    if num_classes is not None:
        view["num_classes"] = num_classes
    if num_features is not None:
        view["num_features"] = num_features
    if cfg.get("class_names"):
        view["label_names"] = list(cfg["class_names"])
    # Only the arguments timm's builders take under the same meaning: timm builds its own network.
    view["model_args"] = {k: kwargs[k] for k in ("num_classes", "in_chans") if k in kwargs}
    if any(key.startswith("AuxLogits.") for key in state_keys):
        # timm's Inception-v3 reads the tag tv_in1k as "torchvision's layout, auxiliary classifier
        # included" and loads such weights without it: plain logits, as ours give in eval mode.
        # (aux_logits=True would make timm return a tuple from every call.)
        timm_cfg["tag"] = "tv_in1k"
    view["pretrained_cfg"] = timm_cfg
    view[OUR_KEY] = config
    return view


def read_layout(raw: Any, where: str) -> Any:
    """Our config from what a ``config.json`` holds: this layout, ours before it, or timm's own.

    Anything that is not a JSON object is returned as it is, for the caller's check to refuse.

    Args:
        raw: The parsed file.
        where: The file, for messages.

    Raises:
        ValueError: ``"backbones"`` is not an object, or a timm config's ``pretrained_cfg`` is not one.
    """
    if not isinstance(raw, dict):
        return raw
    if OUR_KEY in raw:
        ours = raw[OUR_KEY]
        if not isinstance(ours, dict):
            raise ValueError(f"{where}: '{OUR_KEY}' must be an object (the config save_pretrained writes)")
        return ours
    if "model_kwargs" in raw or raw.get("library_name") == "backbones" or "pretrained_cfg" not in raw:
        return raw  # ours from before the timm-readable layout (or not a config: the check says why)
    return _from_timm(raw, where)


def _from_timm(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A timm ``save_for_hf`` config as ours: the architecture, its classes and preprocessing."""
    timm_cfg = raw["pretrained_cfg"]
    if not isinstance(timm_cfg, dict):
        raise ValueError(f"{where}: 'pretrained_cfg' must be an object")
    model_args = raw.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise ValueError(f"{where}: 'model_args' must be an object")
    num_classes = raw.get("num_classes", model_args.get("num_classes", timm_cfg.get("num_classes")))
    defaults = _TIMM_DEFAULT_ARGS.get(str(raw.get("architecture")), {})
    kwargs = {k: model_args.get(k, v) for k, v in defaults.items()}
    kwargs.update({k: model_args[k] for k in ("in_chans",) if k in model_args})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    cfg: dict[str, Any] = {k: timm_cfg[k] for k in _SHARED_CFG_FIELDS if k in timm_cfg}
    if num_classes is not None:
        cfg["num_classes"] = num_classes
    input_size = timm_cfg.get("input_size")
    crop_pct = timm_cfg.get("crop_pct")
    if isinstance(input_size, list) and len(input_size) == 3 and isinstance(input_size[-1], int):
        crop = input_size[-1]
        cfg["crop_size"] = crop
        if isinstance(crop_pct, (int, float)) and not isinstance(crop_pct, bool) and 0 < crop_pct <= 1:
            cfg["resize_size"] = math.floor(crop / crop_pct)
            cfg["crop_pct"] = crop_pct
    labels = raw.get("label_names", timm_cfg.get("label_names"))
    cfg["class_names"] = labels if isinstance(labels, list) else None
    return {
        "architecture": raw.get("architecture"),
        "model_kwargs": kwargs,
        "features_only": False,
        "out_indices": None,
        "pretrained_cfg": cfg,
        "library_name": "timm",
    }
