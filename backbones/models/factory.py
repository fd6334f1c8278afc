"""Building a model by name: the public builders, ``create_model`` and the listings.

Every architecture is registered once by decorating its builder with :func:`register_model`.
The decorator returns the public builder (``backbones.resnet50``), which is a thin call into
:func:`create_model`, so ``backbones.resnet50(pretrained=True)``, ``create_model("resnet50",
pretrained=True)`` and the torch.hub entrypoint all take the same path. ``create_model``
composes the registry (names), the weights layer (manifest, loading) and the model's own
``feature_extractor`` for ``features_only``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch.nn as nn

from backbones.core.options import check_flags, check_model_options, check_out_indices
from backbones.core.registry import ModelEntry, add_entry, get_model_entry, model_entries, split_model_name
from backbones.hub.loading import load_pretrained
from backbones.hub.manifest import class_names, head_consistent_cfg, pretrained_cfg_for, weight_names
from backbones.hub.weight_source import WeightSource, resolve_weight_source

__all__ = ["build_model", "create_model", "list_models", "list_pretrained", "register_model"]

_PUBLIC_BUILDER_DOC = """
    Args:
        pretrained: ``False`` for random weights; ``True`` for the default weights of this
            architecture; a weight tag such as ``"tv_in1k"``; or the path of a weights file.
        **kwargs: Passed to :func:`backbones.create_model` (``features_only``, ``out_indices``,
            ``progress``) and then to the model class (``num_classes``, ``in_chans``, ...).

    Returns:
        The model, in training mode like any freshly built ``nn.Module``.
"""


def register_model(
    *,
    family: str,
    kind: str = "classifier",
    default_cfg: dict[str, Any] | None = None,
    pretrained_kwargs: dict[str, Any] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register an architecture builder under its function name.

    Args:
        family: The model family (``"resnet"``, ``"vgg"``, ``"inception"``).
        kind: ``"classifier"`` or ``"fpn"``.
        default_cfg: Input size, resize/crop, interpolation, mean and std used without weights.
        pretrained_kwargs: Constructor options applied whenever a weight tag is loaded (the
            caller's options still win), so a policy such as the FPN's frozen BatchNorm is
            stated by the architecture once instead of in each manifest entry.

    Returns:
        A decorator. It records the builder and returns the public builder, which accepts
        ``pretrained`` and forwards everything to :func:`create_model`.

    Example:
        >>> @register_model(family="resnet")
        ... def my_resnet(**kwargs):
        ...     return ResNet(BasicBlock, [1, 1, 1, 1], **kwargs)
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = builder.__name__
        add_entry(ModelEntry(name, builder, family, kind, dict(default_cfg or {}), dict(pretrained_kwargs or {})))

        def public_builder(pretrained: bool | str | Path = False, **kwargs: Any) -> nn.Module:
            return create_model(name, pretrained=pretrained, **kwargs)

        public_builder.__name__ = public_builder.__qualname__ = name
        public_builder.__module__ = builder.__module__
        public_builder.__doc__ = (builder.__doc__ or f"Build {name}.").rstrip() + "\n" + _PUBLIC_BUILDER_DOC
        return public_builder

    return decorate


def list_models(
    pattern: str | None = None,
    *,
    family: str | None = None,
    kind: str | None = None,
    pretrained: bool = False,
) -> list[str]:
    """List registered architecture names, sorted.

    Args:
        pattern: A shell-style wildcard such as ``"resnet*"``; ``None`` lists everything.
        family: Keep only this family (``"resnet"``, ``"vgg"``, ``"inception"``).
        kind: Keep only ``"classifier"`` or ``"fpn"`` models.
        pretrained: List ``arch.tag`` names of available weights instead of architectures.

    Raises:
        TypeError: ``pattern`` is not a string (or ``None``).

    Example:
        >>> list_models("resnet*", kind="classifier")
        ['resnet101', 'resnet152', 'resnet18', 'resnet34', 'resnet50']
    """
    _check_pattern(pattern)
    entries = [
        e for e in model_entries() if (family is None or e.family == family) and (kind is None or e.kind == kind)
    ]
    if pretrained:
        archs = {e.name for e in entries}
        names = [n for n in list_pretrained() if split_model_name(n)[0] in archs]
    else:
        names = [e.name for e in entries]
    return sorted(_matching(names, pattern))


def list_pretrained(pattern: str | None = None) -> list[str]:
    """List the ``arch.tag`` names that have weights in the manifest.

    Raises:
        TypeError: ``pattern`` is not a string (or ``None``).

    A pattern without a tag matches the tags of what it names, as timm's does: ``"resnet50"``
    lists every ``resnet50.*``.

    Example:
        >>> "resnet50.tv2_in1k" in list_pretrained("resnet50")
        True
    """
    _check_pattern(pattern)
    return sorted(_matching(weight_names(), pattern))


def _matching(names: Iterable[str], pattern: str | None) -> list[str]:
    """``names`` that ``pattern`` matches; for an ``arch.tag`` name, a pattern without a tag
    (``resnet50``) matches ``resnet50.*`` too."""
    if pattern is None:
        return list(names)
    patterns = [pattern] if split_model_name(pattern)[1] else [pattern, f"{pattern}.*"]
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]


def _imagenet_names_for_a_bare_file(cfg: dict[str, Any], kind: str) -> dict[str, Any]:
    """A weights file carries no class names: a 1000-class head is ImageNet's (torchvision's and
    timm's checkpoints, the reference scripts' too), so it is named by ImageNet's classes rather
    than by index."""
    if kind != "file" or cfg.get("class_names") or cfg.get("num_classes") != len(class_names("imagenet-1k")):
        return cfg
    return {**cfg, "class_names": class_names("imagenet-1k")}


def _check_pattern(pattern: Any) -> None:
    # fnmatch would fail on a number with a message about os.PathLike, which says nothing here.
    if pattern is not None and not isinstance(pattern, str):
        raise TypeError(
            f"pattern must be a shell-style wildcard string such as 'resnet*' (or None for all), got {pattern!r} "
            f"({type(pattern).__name__})"
        )


def create_model(
    model_name: str,
    pretrained: bool | str | Path = False,
    *,
    features_only: bool = False,
    out_indices: Iterable[int] | None = None,
    progress: bool = True,
    reinit_head: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally with pretrained weights or as a feature extractor.

    Args:
        model_name: ``"arch"`` or ``"arch.tag"``, e.g. ``"resnet50"`` or ``"resnet50.tv2_in1k"``.
            A tag selects that weight's preprocessing config, and its weights when ``pretrained``.
        pretrained: ``False``; ``True`` (the tag in the name, else the default tag); a tag;
            or a path to a ``.safetensors`` / ``.pth`` file or a folder made by ``save_pretrained``.
        features_only: Return a :class:`~backbones.models.extractor.FeatureExtractor` whose forward gives
            an ``OrderedDict`` of stage outputs instead of logits.
        out_indices: With ``features_only``: which stages of ``model.feature_info`` to return.
        progress: Show a progress bar while downloading weights.
        reinit_head: With ``pretrained`` and a ``num_classes`` other than the checkpoint's: load
            everything but the classifier, which stays freshly initialised (a warning says so).
            Without it, a class-count mismatch is an error.
        **kwargs: Passed to the model class (``num_classes``, ``in_chans``, ``norm_layer``, ...).

    Returns:
        The model, in training mode like any freshly built ``nn.Module``.

    Raises:
        UnknownModelError: The name or tag is not registered (the message suggests close names).
        ValueError: An option of the wrong type or out of range (``num_classes=-1``, ``in_chans=0``,
            ``pretrained=1``, ``out_indices=5``); the message names it.
        WeightsError: Weights were asked for and cannot be obtained, are corrupt, or do not fit.

    Example:
        >>> model = create_model("resnet18", num_classes=10)
        >>> model(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """
    get_model_entry(model_name)  # an unknown name is named before anything else
    arch, tag = split_model_name(model_name)
    weights = resolve_weight_source(arch, tag, pretrained)
    return build_model(
        weights,
        features_only=features_only,
        out_indices=out_indices,
        progress=progress,
        reinit_head=reinit_head,
        **kwargs,
    )


def build_model(
    weights: WeightSource,
    *,
    features_only: bool = False,
    out_indices: Iterable[int] | None = None,
    progress: bool = True,
    reinit_head: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build ``weights.arch`` with the weights ``weights`` names: :func:`create_model` after resolving ``pretrained``.

    Args:
        weights: From :func:`~backbones.hub.weight_source.resolve_weight_source` (or a
            :class:`~backbones.models.reference.ModelSource`).
        features_only: See :func:`create_model`.
        out_indices: See :func:`create_model`.
        progress: Show a progress bar while downloading weights.
        reinit_head: See :func:`create_model`.
        **kwargs: Passed to the model class.

    Returns:
        The model, in training mode.

    Raises:
        ValueError: A bad option, ``features_only`` or ``num_classes`` on an FPN, or a flag that is not
            a bool (``features_only="no"``).
        WeightsError: The weights cannot be obtained, are corrupt, or do not fit.
    """
    entry = get_model_entry(weights.arch)
    arch = weights.arch
    check_flags({"features_only": features_only, "progress": progress, "reinit_head": reinit_head})
    check_model_options(kwargs)
    if entry.kind == "fpn" and "num_classes" in kwargs:
        # The body is built without its classifier; a class count would be dropped without a word.
        raise ValueError(
            f"{arch!r} is a feature pyramid and has no classifier, so num_classes={kwargs['num_classes']!r} does not "
            f"apply; the detection head built on it takes the classes (or use the classifier "
            f"{arch.removesuffix('_fpn')!r})"
        )
    out_indices = check_out_indices(out_indices)
    if features_only and entry.kind != "classifier":
        raise ValueError(
            f"{arch!r} already returns multi-scale features; features_only applies to "
            f"classification models such as {arch.removesuffix('_fpn')!r}"
        )
    if out_indices is not None and not features_only:
        raise ValueError("out_indices only applies with features_only=True")
    policy = entry.pretrained_kwargs if weights.kind == "tag" else {}
    build_kwargs = {**policy, **weights.model_kwargs, **kwargs}
    model = entry.builder(**build_kwargs)
    classes = getattr(model, "num_classes", None) if entry.kind == "classifier" else None
    model.pretrained_cfg = _imagenet_names_for_a_bare_file(
        head_consistent_cfg(pretrained_cfg_for(entry, weights.spec), classes), weights.kind
    )
    # What save_pretrained writes to config.json, so from_pretrained can rebuild the same network.
    model.model_config = {"architecture": arch, **build_kwargs}
    load_pretrained(model, weights, progress=progress, reinit_head=reinit_head)
    return model.feature_extractor(out_indices) if features_only else model
