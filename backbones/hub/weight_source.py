"""Which weights ``pretrained`` names, decided once: a manifest tag, a local file or folder, a Hub repo, or none.

``create_model`` resolves its ``pretrained`` argument here into a :class:`WeightSource`;
:func:`backbones.hub.loading.load_pretrained` takes only that value, so nothing downstream asks
again whether a string is a path or a tag.

Example:
    >>> resolve_weight_source("resnet50", None, True).kind
    'tag'
    >>> resolve_weight_source("resnet50", None, False).describe()
    'random'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from backbones.core.references import is_hub_repo_id, path_like
from backbones.core.registry import UnknownModelError
from backbones.hub.manifest import WeightSpec, get_weight_spec

__all__ = ["WeightSource", "WeightSourceKind", "check_pretrained_value", "resolve_weight_source"]

WeightSourceKind = Literal["none", "tag", "file", "folder", "hub"]


@dataclass(frozen=True)
class WeightSource:
    """The weights a model is built with.

    Attributes:
        arch: The architecture the weights are for.
        kind: ``"none"`` (random initialisation), ``"tag"`` (a manifest entry), ``"file"`` (a
            ``.safetensors`` / ``.pth`` file), ``"folder"`` (a ``save_pretrained`` folder's
            ``model.safetensors``) or ``"hub"`` (a Hub repo's ``model.safetensors``).
        spec: The manifest entry of a tag. With ``kind="none"`` it may still be set: a tag in the
            model name selects its preprocessing and constructor options without loading weights.
        path: The local file or folder.
        repo_id: The Hub repo.
    """

    arch: str
    kind: WeightSourceKind
    spec: WeightSpec | None = None
    path: Path | None = None
    repo_id: str | None = None

    @property
    def loads_weights(self) -> bool:
        """Whether building the model loads weights (every kind but ``"none"``)."""
        return self.kind != "none"

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Constructor options the weights need (a tag's manifest entry may name some)."""
        return dict(self.spec.model_kwargs) if self.spec is not None else {}

    def describe(self) -> str:
        """The weights in a word or a path: ``"random"``, ``"resnet50.tv2_in1k"``, a resolved path, a repo id."""
        if self.kind == "none":
            return "random"
        if self.kind == "tag":
            assert self.spec is not None
            return self.spec.name
        if self.kind == "hub":
            return str(self.repo_id)
        return str(Path(str(self.path)).resolve())


def check_pretrained_value(pretrained: object) -> None:
    """Refuse ``pretrained`` values that are none of ``True``/``False``/``None``, a tag or a path.

    Raises:
        ValueError: ``0``/``1`` (ints are not flags here), ``""``, or another type.
    """
    if pretrained is None or isinstance(pretrained, (bool, Path)):
        return
    if isinstance(pretrained, str):
        if not pretrained.strip():
            raise ValueError("pretrained='' names nothing; give True, a weight tag such as 'tv_in1k', or a path")
        return
    raise ValueError(
        f"pretrained must be True/False, a weight tag such as 'tv_in1k', a path or a Hub repo id, got "
        f"{pretrained!r} ({type(pretrained).__name__})"
    )


def resolve_weight_source(arch: str, tag: str | None, pretrained: bool | str | Path | None) -> WeightSource:
    """The weights ``create_model(arch[.tag], pretrained=...)`` builds with.

    ``False`` / ``None``: random (a tag in the name still selects its preprocessing). ``True``:
    the tag in the name, else the default tag. A string or ``Path``: an existing file or folder
    first, then anything that can only be a path (it must exist), then an ``owner/name`` Hub
    repo, then a weight tag (see :mod:`backbones.core.references`).

    Raises:
        ValueError: ``pretrained`` is not one of those (``0``, ``1``, ``""``), or the name's tag and
            ``pretrained`` name two different weights.
        UnknownModelError: A string that is neither a path nor a Hub repo id nor a weight tag.
    """
    check_pretrained_value(pretrained)
    name_spec = get_weight_spec(arch, tag) if tag is not None else None
    if pretrained is None or pretrained is False:
        return WeightSource(arch, "none", spec=name_spec)
    if pretrained is True:
        return WeightSource(arch, "tag", spec=name_spec or get_weight_spec(arch))
    text = str(pretrained)
    local = Path(text).expanduser()
    if local.exists() or path_like(pretrained):
        _refuse_second_weights(arch, tag, text)
        return _local_source(arch, local)
    if is_hub_repo_id(text):
        _refuse_second_weights(arch, tag, text)
        return WeightSource(arch, "hub", repo_id=text)
    if tag is not None and tag != text:
        raise ValueError(f"the name asks for weights {tag!r} but pretrained={text!r}; give one")
    try:
        return WeightSource(arch, "tag", spec=get_weight_spec(arch, text))
    except UnknownModelError as err:
        raise UnknownModelError(
            f"pretrained={text!r} is neither a file or folder (none at {local.resolve()}), nor a Hub repo id "
            f"(owner/name), nor a weight tag: {err}"
        ) from None


def _refuse_second_weights(arch: str, tag: str | None, pretrained: str) -> None:
    if tag is not None:
        raise ValueError(
            f"the name {arch}.{tag} asks for the weights {tag!r} and pretrained={pretrained!r} for others; give "
            f"{arch!r} with pretrained={pretrained!r}, or {arch}.{tag} alone"
        )


def _local_source(arch: str, local: Path) -> WeightSource:
    # Whether the file exists and holds weights is for the reader to say (one message per problem).
    return WeightSource(arch, "folder" if local.is_dir() else "file", path=local)
