"""Hugging Face Hub format for every model: ``save_pretrained``, ``from_pretrained``, ``push_to_hub``.

A saved model is a folder (or Hub repo) of ``config.json`` (the architecture name, its options
and the preprocessing config), ``model.safetensors`` (the weights, our native keys) and a model
card ``README.md``. ``from_pretrained`` rebuilds the architecture from ``config.json`` through
the registry, so it works for classification models, ``features_only`` extractors and FPNs.

Example:
    >>> model = backbones.create_model("resnet18", num_classes=10)
    >>> model.save_pretrained("my-resnet18")
    >>> same = backbones.ResNet.from_pretrained("my-resnet18")     # or a Hub repo id
    >>> model.push_to_hub("me/my-resnet18")
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch.nn as nn

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "HubMixin", "from_pretrained", "load_config"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
_EXTRACTOR_KEYS = ("features_only", "out_indices")

ModelT = TypeVar("ModelT", bound=nn.Module)


def _json_ready(value: Any, name: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, name) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_ready(v, name) for k, v in value.items()}
    raise TypeError(
        f"model option {name}={value!r} cannot be written to {CONFIG_NAME}; build the model with a JSON value "
        f"(for norm_layer a name such as 'frozen_batchnorm') to save it"
    )


def model_config_json(model: nn.Module) -> dict[str, Any]:
    """The ``config.json`` content for ``model`` (built by ``create_model``)."""
    config = getattr(model, "model_config", None)
    if not config:
        raise ValueError(
            f"this {type(model).__name__} was not built by backbones.create_model, so its architecture options "
            f"are unknown; build it with create_model(...) to save it"
        )
    options = {k: v for k, v in config.items() if k != "architecture" and k not in _EXTRACTOR_KEYS}
    from backbones.core.version import __version__

    return {
        "architecture": config["architecture"],
        "model_kwargs": {k: _json_ready(v, k) for k, v in options.items()},
        "features_only": bool(config.get("features_only", False)),
        "out_indices": config.get("out_indices"),
        "pretrained_cfg": _json_ready(getattr(model, "pretrained_cfg", {}), "pretrained_cfg"),
        "library_name": "backbones",
        "backbones_version": __version__,
    }


def load_config(repo_id_or_dir: str | Path, *, revision: str | None = None) -> dict[str, Any]:
    """Read ``config.json`` of a saved model, from a folder or a Hub repo."""
    path = _resolve(repo_id_or_dir, CONFIG_NAME, revision, progress=False)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if "architecture" not in config:
        raise ValueError(f"{path} has no 'architecture': it was not written by backbones' save_pretrained")
    return config


def _resolve(repo_id_or_dir: str | Path, filename: str, revision: str | None, progress: bool) -> Path:
    local = Path(repo_id_or_dir).expanduser()
    if local.is_dir():
        path = local / filename
        if not path.exists():
            raise FileNotFoundError(f"{local} has no {filename}; save models with model.save_pretrained(folder)")
        return path
    if isinstance(repo_id_or_dir, Path) or str(repo_id_or_dir).count("/") != 1:
        raise FileNotFoundError(f"{repo_id_or_dir} is neither a folder nor a Hub repo id such as 'owner/name'")
    from backbones.hub.download import fetch_hub_file

    return fetch_hub_file(str(repo_id_or_dir), filename, revision=revision, what=str(repo_id_or_dir), progress=progress)


def from_pretrained(
    repo_id_or_dir: str | Path, *, revision: str | None = None, progress: bool = True, **overrides: Any
) -> nn.Module:
    """Build the model a ``save_pretrained`` folder or Hub repo describes and load its weights.

    Args:
        repo_id_or_dir: A local folder or a Hub repo id (``"owner/name"``).
        revision: A Hub branch, tag or commit.
        progress: Show download progress.
        **overrides: Model options replacing the saved ones (e.g. ``num_classes`` with
            ``reinit_head=True`` to fine-tune on other classes).

    Example:
        >>> model = backbones.from_pretrained("someone/my-finetuned-resnet")
    """
    from backbones.hub.loading import load_fitting_state_dict, load_local_state_dict
    from backbones.models.factory import create_model

    config = load_config(repo_id_or_dir, revision=revision)
    reinit_head = overrides.pop("reinit_head", False)
    kwargs = {**config.get("model_kwargs", {}), **overrides}
    if config.get("features_only"):
        kwargs.update(features_only=True, out_indices=config.get("out_indices"))
    model = create_model(config["architecture"], **kwargs)
    if config.get("pretrained_cfg"):
        model.pretrained_cfg = config["pretrained_cfg"]
    weights = _resolve(repo_id_or_dir, WEIGHTS_NAME, revision, progress)
    state = load_local_state_dict(weights, config["architecture"])
    load_fitting_state_dict(model, state, what=str(repo_id_or_dir), reinit_head=reinit_head)
    return model


class HubMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for models built by ``create_model``."""

    def save_pretrained(self, save_directory: str | Path, *, model_card: bool = True) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a model card ``README.md`` to a folder.

        Returns:
            The folder.
        """
        from backbones.core.files import save_safetensors_atomic

        folder = Path(save_directory).expanduser()
        config = model_config_json(self)  # type: ignore[arg-type]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        save_safetensors_atomic(state, folder / WEIGHTS_NAME, metadata={"format": "pt"})
        if model_card:
            from backbones.hub.model_card import render_model_card

            (folder / CARD_NAME).write_text(render_model_card(config), encoding="utf-8")
        return folder

    @classmethod
    def from_pretrained(
        cls: type[ModelT], repo_id_or_dir: str | Path, *, revision: str | None = None, **overrides: Any
    ) -> ModelT:
        """Load a model saved with ``save_pretrained``, from a folder or a Hub repo id.

        Raises:
            TypeError: The saved architecture is not a ``cls`` (use ``backbones.from_pretrained``).
        """
        model = from_pretrained(repo_id_or_dir, revision=revision, **overrides)
        if cls is not HubMixin and not isinstance(model, cls):
            raise TypeError(
                f"{repo_id_or_dir} holds a {type(model).__name__}, not a {cls.__name__}; load it with "
                f"backbones.from_pretrained({str(repo_id_or_dir)!r})"
            )
        return model  # type: ignore[return-value]

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = False,
        token: str | None = None,
        commit_message: str = "Upload model with backbones",
        revision: str | None = None,
    ) -> str:
        """Save the model and upload it as a Hub model repo (created if missing).

        Returns:
            The URL of the commit.
        """
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision
            )
        return str(getattr(commit, "commit_url", commit))
