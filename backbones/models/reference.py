"""Which model the user means: one resolver for every command and API that takes a model reference.

A reference is one of:

* a registered architecture (``resnet50``) or ``arch.tag`` (``resnet50.tv2_in1k``);
* a folder written by ``save_pretrained`` or ``backbones finetune`` (it holds ``config.json``);
* a weights file (``.safetensors`` / ``.pth``): its architecture is the registered one its
  layers fit;
* an ``owner/name`` Hugging Face Hub repo saved with ``save_pretrained`` / ``push_to_hub``;
* a module, used as it is (API only).

:func:`resolve_model` reads the reference (and the ``pretrained`` choice for a name) into a
:class:`ModelSource` without building anything heavy, so a command can refuse a wrong kind of
model before weights are fetched; :meth:`ModelSource.build` then builds it.

Example:
    >>> source = resolve_model("resnet18", pretrained=False)
    >>> source.architecture, source.origin, source.weights.describe()
    ('resnet18', 'name', 'random')
    >>> model = source.build(num_classes=10)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from backbones.core.references import CONFIG_NAME, WEIGHTS_NAME, is_hub_repo_id, path_like
from backbones.core.registry import ModelEntry, UnknownModelError, get_model_entry, split_model_name
from backbones.hub.manifest import head_consistent_cfg
from backbones.hub.weight_source import WeightSource, check_pretrained_value, resolve_weight_source
from backbones.models.factory import build_model
from backbones.models.pretrained import from_pretrained, load_config

__all__ = ["ModelOrigin", "ModelSource", "resolve_model"]

ModelOrigin = Literal["name", "folder", "file", "hub", "module"]
# What a reference may be, for messages that list them.
_REFERENCE_KINDS = (
    "a registered architecture or arch.tag, a folder written by save_pretrained or "
    "finetune, a weights file, or an owner/name Hub repo"
)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference: what to build, with which weights, and where it came from.

    Attributes:
        reference: What the caller gave, as text (a module: its class name).
        origin: ``"name"``, ``"folder"``, ``"file"``, ``"hub"`` or ``"module"``.
        architecture: The registered architecture.
        weights: The weights it is built with. A folder's or Hub repo's own weights are
            ``kind="folder"`` / ``"hub"``.
        config: The saved ``config.json`` of a folder or Hub repo (``None`` otherwise).
        module: The module itself, for ``origin="module"``.
        options: Model options the reference implies (a weights file's class count).
    """

    reference: str
    origin: ModelOrigin
    architecture: str
    weights: WeightSource
    config: dict[str, Any] | None = None
    module: nn.Module | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def entry(self) -> ModelEntry:
        """The architecture's registry entry (family, kind, builder)."""
        return get_model_entry(self.architecture)

    @property
    def is_classifier(self) -> bool:
        """Whether it gives class logits: a classification architecture not saved as a feature extractor."""
        if self.module is not None:
            return bool(getattr(self.module, "num_classes", 0))
        saved = self.config or {}
        return (
            self.entry.kind == "classifier"
            and not saved.get("features_only")
            and (saved.get("model_kwargs") or {}).get("num_classes", 1) != 0
        )

    @property
    def saved_num_classes(self) -> int | None:
        """The class count a saved folder or Hub repo was written with (``None`` for other origins)."""
        if self.config is None:
            return None
        return (self.config.get("model_kwargs") or {}).get("num_classes")

    def describe_weights(self) -> str:
        """The weights in words, for manifests, logs and messages: an ``arch.tag``, a path, a repo id or ``random``."""
        if self.origin == "module":
            return "in-memory module"
        return self.weights.describe()

    @property
    def random_weights(self) -> bool:
        """Whether the weights are drawn at random (an architecture with ``pretrained=False``): a seed decides them."""
        return self.module is None and self.weights.kind == "none"

    def build(
        self, *, progress: bool = True, reinit_head: bool = False, seed: int | None = None, **overrides: Any
    ) -> nn.Module:
        """Build the model with its weights.

        Args:
            progress: Show download progress.
            reinit_head: With ``num_classes`` other than the weights': keep a fresh classifier.
            seed: Draw the random initialisation (random weights, a fresh head) from this seed, so
                every process of a ``torchrun`` job, and every rerun, builds the same network; the
                caller's random generator is left as it was. ``None``: from the generator as it is.
            **overrides: Model options (``num_classes``, ``aux_logits``, ...); for a saved folder
                or Hub repo they replace the saved ones.

        Returns:
            The model, in training mode (a module reference: the module as it is).

        Raises:
            ValueError: Options given with a module reference.
            WeightsError: The weights cannot be obtained, are corrupt, or do not fit.
        """
        if seed is None:
            return self._build(progress, reinit_head, overrides)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator: models are built on the CPU
            return self._build(progress, reinit_head, overrides)

    def _build(self, progress: bool, reinit_head: bool, overrides: dict[str, Any]) -> nn.Module:
        if self.module is not None:
            if overrides or reinit_head:
                raise ValueError("a model object is used as it is; build it with the options you need")
            return self.module
        if self.origin in ("folder", "hub"):
            return from_pretrained(self.reference, progress=progress, reinit_head=reinit_head, **overrides)
        return build_model(self.weights, progress=progress, reinit_head=reinit_head, **{**self.options, **overrides})

    def skeleton(self, **overrides: Any) -> nn.Module:
        """The network's structure on the meta device, with the ``pretrained_cfg`` it will have; no weights read.

        Instant even for VGG: for input checks, summaries and preprocessing before the real build.
        """
        if self.module is not None:
            return self.module
        config = self.config or {}
        kwargs = {**(config.get("model_kwargs") or {}), **self.options, **overrides}
        if config.get("features_only"):
            kwargs.update(features_only=True, out_indices=config.get("out_indices"))
        unloaded = WeightSource(self.architecture, "none", spec=self.weights.spec)
        with torch.device("meta"):
            model = build_model(unloaded, **kwargs)
        if config.get("pretrained_cfg"):
            model.pretrained_cfg = head_consistent_cfg(config["pretrained_cfg"], getattr(model, "num_classes", None))
        return model


def resolve_model(
    reference: str | Path | nn.Module,
    pretrained: bool | str | Path | None = None,
    *,
    default: bool = True,
) -> ModelSource:
    """Read a model reference (see the module docstring) into a :class:`ModelSource`.

    Args:
        reference: An architecture, ``arch.tag``, a ``save_pretrained`` / ``finetune`` folder, a
            weights file, an ``owner/name`` Hub repo, or a module.
        pretrained: For a registered name: ``True`` (the tag in the name, else the default tag),
            ``False`` (random), a weight tag, a weights file or folder, or a Hub repo.
            ``None``: not chosen, so the tag in the name, else ``default``. A folder, file, Hub
            repo or module carries its own weights and takes only ``None`` or ``True``.
        default: With ``pretrained=None`` and no tag in the name: ``True`` loads the default
            weights, ``False`` builds with random weights.

    Returns:
        The resolved reference. Only a Hub repo's ``config.json`` is fetched (and a weights
        file's tensors read, to tell its architecture); nothing is built.

    Raises:
        ValueError: ``pretrained`` given with a reference that carries its own weights, an empty
            reference, or a weights file several architectures fit.
        FileNotFoundError: A path that does not exist, or a folder without ``config.json``.
        UnknownModelError: A name that is none of the above (the message suggests close names).
    """
    check_pretrained_value(pretrained)
    if isinstance(reference, nn.Module):
        _refuse_pretrained(pretrained, "a model object")
        architecture = str(getattr(reference, "model_config", {}).get("architecture", type(reference).__name__))
        return ModelSource(
            type(reference).__name__, "module", architecture, WeightSource(architecture, "none"), None, reference
        )
    text = str(reference)
    if not text.strip():
        raise ValueError(f"an empty model reference names nothing; give {_REFERENCE_KINDS}")
    local = Path(text).expanduser()
    unregistered = _registry_error(text)
    if local.is_dir() and ((local / CONFIG_NAME).is_file() or unregistered is not None):
        return _saved_folder(text, local, pretrained)
    if local.is_file():
        return _weights_file(text, local, pretrained)
    if unregistered is None:
        arch, tag = split_model_name(text)
        chosen = pretrained if pretrained is not None else (tag is not None or default)
        weights = resolve_weight_source(arch, tag, chosen)
        if weights.kind == "folder" and (Path(str(weights.path)) / CONFIG_NAME).is_file():
            return _saved_weights_of(arch, Path(str(weights.path)))
        # A weights file brings its classifier: the model is built with the file's class count.
        options = _class_count_of(arch, _read(Path(str(weights.path)), arch)) if weights.kind == "file" else {}
        return ModelSource(text, "name", arch, weights, options=options)
    if path_like(reference):
        raise FileNotFoundError(f"there is no file or folder {local.resolve()}; check the path")
    if is_hub_repo_id(text):
        _refuse_pretrained(pretrained, text)
        config = load_config(text)
        architecture = config["architecture"]
        return ModelSource(text, "hub", architecture, WeightSource(architecture, "hub", repo_id=text), config)
    raise UnknownModelError(f"{unregistered}. A model is {_REFERENCE_KINDS}")


def _registry_error(text: str) -> UnknownModelError | None:
    """Why ``text`` is not a registered name (``None`` when it is one)."""
    try:
        get_model_entry(text)
    except UnknownModelError as err:
        return err
    return None


def _refuse_pretrained(pretrained: object, what: str) -> None:
    # True asks for "the weights it comes with", which a folder, file or repo gives.
    if pretrained is not None and pretrained is not True:
        raise ValueError(
            f"{what} carries its own weights, so pretrained={pretrained!r} does not apply (it chooses the weights of "
            f"a registered architecture); give the folder, file or repo alone"
        )


def _saved_folder(text: str, folder: Path, pretrained: object) -> ModelSource:
    if not (folder / CONFIG_NAME).is_file():
        hint = (
            f"; it holds {WEIGHTS_NAME} alone, so name the architecture and give the folder as its weights "
            f"(pretrained={text!r})"
            if (folder / WEIGHTS_NAME).is_file()
            else ""
        )
        raise FileNotFoundError(
            f"{folder} has no {CONFIG_NAME}, so it is not a folder written by save_pretrained or finetune{hint}"
        )
    _refuse_pretrained(pretrained, str(folder))
    config = load_config(folder)
    architecture = config["architecture"]
    return ModelSource(text, "folder", architecture, WeightSource(architecture, "folder", path=folder), config)


def _saved_weights_of(arch: str, folder: Path) -> ModelSource:
    """A saved folder given as an architecture's weights: the saved model (its head, classes, preprocessing)."""
    source = _saved_folder(str(folder), folder, None)
    if source.architecture != arch:
        raise ValueError(
            f"{folder} holds a {source.architecture}, not a {arch}; use the folder itself as the model (it "
            f"names its own architecture)"
        )
    return source


def _weights_file(text: str, path: Path, pretrained: object) -> ModelSource:
    if path.name == CONFIG_NAME or (path.name == WEIGHTS_NAME and (path.parent / CONFIG_NAME).is_file()):
        return _saved_folder(str(path.parent), path.parent, pretrained)  # a file of a saved folder: the folder
    _refuse_pretrained(pretrained, str(path))
    from backbones.hub.loading import architectures_fitting

    # Our own key layout only: a timm or detection checkpoint is converted once its architecture is named.
    state = _read(path)
    fitting = architectures_fitting(state)
    if len(fitting) != 1:
        found = f"fits {' and '.join(fitting)}" if fitting else "fits no registered architecture"
        raise ValueError(
            f"{path} {found}, so the architecture cannot be told from the file alone; name the architecture and "
            f"give the file as its weights (pretrained={text!r})"
        )
    architecture = fitting[0]
    weights = WeightSource(architecture, "file", path=path)
    return ModelSource(text, "file", architecture, weights, options=_class_count_of(architecture, state))


def _read(path: Path, arch: str | None = None) -> dict[str, torch.Tensor]:
    """A weights file's tensors; in our key layout when ``arch`` is known (timm's VGG head converted)."""
    from backbones.hub.loading import load_local_state_dict, read_state_dict

    return read_state_dict(path, str(path)) if arch is None else load_local_state_dict(path, arch)


def _class_count_of(architecture: str, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``num_classes`` of the classifier a checkpoint holds (0 without one), for a classification architecture."""
    with torch.device("meta"):
        skeleton = get_model_entry(architecture).builder()
    classifier = getattr(skeleton, "classifier_name", None)
    if classifier is None:
        return {}
    weight = state.get(f"{classifier}.weight")
    return {"num_classes": int(weight.shape[0]) if weight is not None else 0}
