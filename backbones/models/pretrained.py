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

from backbones.core.references import CONFIG_NAME, WEIGHTS_NAME, is_hub_repo_id, path_like

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "HubMixin", "check_config", "from_pretrained", "load_config", "local_folder"]

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
    """The ``config.json`` content for ``model`` (built by ``create_model``).

    Its ``pretrained_cfg`` agrees with the model's classifier as it is now: after
    ``reset_classifier`` or a new ``num_classes`` the weights' class names and reported metrics are
    dropped (see :func:`~backbones.hub.manifest.head_consistent_cfg`).
    """
    from backbones.core.version import __version__
    from backbones.hub.manifest import head_consistent_cfg
    from backbones.hub.timm_config import timm_crop_pct

    config = getattr(model, "model_config", None)
    if not config:
        raise ValueError(
            f"this {type(model).__name__} was not built by backbones.create_model, so its architecture options "
            f"are unknown; build it with create_model(...) to save it"
        )
    options = {k: v for k, v in config.items() if k != "architecture" and k not in _EXTRACTOR_KEYS}
    options.pop("backbone_pretrained", None)  # the saved file holds the weights; a config never fetches any
    if hasattr(model, "num_classes"):
        options["num_classes"] = model.num_classes  # reset_classifier changes it after building
    cfg = head_consistent_cfg(dict(getattr(model, "pretrained_cfg", {})), getattr(model, "num_classes", None))
    if cfg.get("crop_size") and cfg.get("resize_size"):
        # A fine-tune at another size changes the resize and crop: the ratio must say the same.
        cfg["crop_pct"] = timm_crop_pct(cfg["crop_size"], cfg["resize_size"])
    return {
        "architecture": config["architecture"],
        "model_kwargs": {k: _json_ready(v, k) for k, v in options.items()},
        "features_only": bool(config.get("features_only", False)),
        "out_indices": config.get("out_indices"),
        "pretrained_cfg": _json_ready(cfg, "pretrained_cfg"),
        "library_name": "backbones",
        "backbones_version": __version__,
    }


def load_config(repo_id_or_dir: str | Path, *, revision: str | None = None, **hub_options: Any) -> dict[str, Any]:
    """Read and check ``config.json`` of a saved model, from a folder or a Hub repo.

    A config describes a model and nothing else: a JSON object with a registered ``architecture``,
    ``model_kwargs`` limited to :data:`~backbones.core.options.CONFIG_OPTIONS` (by type and range;
    ``pretrained`` is refused, so a config cannot make a load fetch or read another file),
    ``features_only``, ``out_indices`` and a ``pretrained_cfg`` object.

    Args:
        repo_id_or_dir: A local folder or a Hub repo id.
        revision: A Hub branch, tag or commit.
        **hub_options: ``token``, ``cache_dir``, ``local_files_only``, ``force_download``.

    Raises:
        ValueError: The file is not JSON, is nested deeper than the JSON parser goes, is not an
            object, or holds something a config may not.
    """
    from backbones.hub.timm_config import read_layout

    path = _resolve(repo_id_or_dir, CONFIG_NAME, revision, progress=False, **hub_options)
    try:
        config = read_layout(json.loads(path.read_text(encoding="utf-8")), str(path))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    except RecursionError:  # lists in lists, thousands deep: what no saved config holds
        raise ValueError(
            f"{path} is not a valid config: its JSON is nested too deeply to read (a config is an object of a few "
            f"levels, as save_pretrained writes it)"
        ) from None
    check_config(config, str(path))
    return config


def check_config(config: Any, where: str) -> None:
    """Check a ``config.json`` object (see :func:`load_config`).

    Raises:
        ValueError: The message names the file, the field and what is allowed.
    """
    from backbones.core.inputs import check_normalization
    from backbones.core.options import check_model_options, check_out_indices
    from backbones.core.registry import get_model_entry
    from backbones.hub.integrity import is_sha256

    if not isinstance(config, dict):
        raise ValueError(f"{where} holds a JSON {type(config).__name__}, not an object with an 'architecture'")
    if "architecture" not in config:
        raise ValueError(f"{where} has no 'architecture': it was not written by backbones' save_pretrained")
    if not isinstance(config["architecture"], str) or "." in config["architecture"]:
        raise ValueError(f"{where}: 'architecture' must be a registered name such as 'resnet50'")
    get_model_entry(config["architecture"])
    kwargs = config.get("model_kwargs", {})
    if not isinstance(kwargs, dict):  # null too: save_pretrained always writes an object
        raise ValueError(f"{where}: 'model_kwargs' must be an object of model options, got {json.dumps(kwargs)[:80]}")
    check_model_options(kwargs, source=where)
    if not isinstance(config.get("features_only", False), bool):
        raise ValueError(f"{where}: 'features_only' must be true or false")
    if config.get("out_indices") is not None:
        if not isinstance(config["out_indices"], list) or any(type(i) is not int for i in config["out_indices"]):
            raise ValueError(f"{where}: 'out_indices' must be a list of ints or null")
        check_out_indices(config["out_indices"])
    digest = config.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and is_sha256(digest)):
        raise ValueError(f"{where}: 'weights_sha256' must be a sha256 hex digest")
    cfg = config.get("pretrained_cfg")
    if cfg is not None and not isinstance(cfg, dict):
        raise ValueError(f"{where}: 'pretrained_cfg' must be an object")
    names = (cfg or {}).get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"{where}: 'pretrained_cfg.class_names' must be a list of strings or null")
    check_normalization(cfg or {}, f"{where}: ")


def _resolve(
    repo_id_or_dir: str | Path, filename: str, revision: str | None, progress: bool, **hub_options: Any
) -> Path:
    """The local path of ``filename`` in a saved-model folder, or of the Hub repo's file (fetched and verified)."""
    folder = local_folder(repo_id_or_dir)
    if folder is not None:
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} applies to Hub repos; {folder} is a local folder (drop revision, or give "
                f"the Hub repo id)"
            )
        path = folder / filename
        if not path.exists():
            raise FileNotFoundError(f"{folder} has no {filename}; save models with model.save_pretrained(folder)")
        return path
    from backbones.hub.download import fetch_hub_file

    repo_id = str(repo_id_or_dir)
    return fetch_hub_file(repo_id, filename, revision=revision, what=repo_id, progress=progress, **hub_options)


def local_folder(repo_id_or_dir: str | Path) -> Path | None:
    """The folder ``repo_id_or_dir`` names, or ``None`` when it is a Hub repo id.

    An existing folder wins; then anything that can only be a path (a ``Path``, ``./x``, ``~/x``,
    ``a/b/c``, or ``a/b`` where ``a`` is a local folder) must exist; the rest must be a valid
    ``owner/name`` Hub id.

    Raises:
        ValueError: An empty name, or one that is neither a path nor a valid Hub repo id.
        FileNotFoundError: A path that does not exist (not tried on the Hub), or a file.
    """
    text = str(repo_id_or_dir)
    if not text.strip():
        raise ValueError("an empty name names no folder and no Hub repo; give a folder or 'owner/name'")
    local = Path(text).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise FileNotFoundError(
            f"{local} is a file; from_pretrained takes a folder written by save_pretrained or a Hub repo id (load a "
            f"weights file with create_model('<arch>', pretrained={text!r}))"
        )
    if path_like(repo_id_or_dir) or "/" not in text:
        first = text.split("/", 1)[0]
        why = (
            f" (the folder {first} exists, so this is read as a path, not a Hub repo id)"
            if "/" in text and Path(first).expanduser().is_dir()
            else ""
        )
        raise FileNotFoundError(f"there is no folder {local.resolve()}{why}; check the path")
    if not is_hub_repo_id(text):
        raise ValueError(
            f"{text!r} is neither a local folder nor a Hub repo id ('owner/name' of letters, digits, '-', '_', '.')"
        )
    return None


def from_pretrained(
    repo_id_or_dir: str | Path,
    *,
    revision: str | None = None,
    progress: bool = True,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build the model a ``save_pretrained`` folder or Hub repo describes and load its weights.

    Args:
        repo_id_or_dir: A local folder or a Hub repo id (``"owner/name"``).
        revision: A Hub branch, tag or commit (a local folder has none).
        progress: Show download progress.
        token: A Hub token for private repos (default: ``HF_TOKEN`` or the stored login).
        cache_dir: A Hugging Face cache folder to use instead of ``HF_HUB_CACHE``.
        local_files_only: Use only cached files (as ``HF_HUB_OFFLINE=1`` does).
        force_download: Download the files again even when cached.
        **overrides: Model options replacing the saved ones (e.g. ``num_classes`` with
            ``reinit_head=True`` to fine-tune on other classes).

    Raises:
        ValueError: A hostile or broken ``config.json``, or ``pretrained`` among the overrides.
        WeightsError: The weights are unavailable, corrupt, or do not fit.

    Example:
        >>> model = backbones.from_pretrained("someone/my-finetuned-resnet")
    """
    from backbones.core.options import check_model_options
    from backbones.hub.loading import load_fitting_state_dict, load_local_state_dict
    from backbones.hub.manifest import head_consistent_cfg
    from backbones.models.factory import create_model

    if "pretrained" in overrides:
        raise ValueError("from_pretrained loads the folder's own weights; it takes no 'pretrained' option")
    reinit_head = overrides.pop("reinit_head", False)
    check_model_options(overrides)
    hub_options = {
        "token": token,
        "cache_dir": cache_dir,
        "local_files_only": local_files_only,
        "force_download": force_download,
    }
    if local_folder(repo_id_or_dir) is not None:
        hub_options = {}
    config = load_config(repo_id_or_dir, revision=revision, **hub_options)
    kwargs = {**config.get("model_kwargs", {}), **overrides}
    if config.get("features_only"):
        kwargs.update(features_only=True, out_indices=config.get("out_indices"))
    model = create_model(config["architecture"], **kwargs)
    if config.get("pretrained_cfg"):
        model.pretrained_cfg = head_consistent_cfg(config["pretrained_cfg"], getattr(model, "num_classes", None))
    weights = _weights_of(repo_id_or_dir, config, revision, progress, **hub_options)
    if hub_options == {} and config.get("weights_sha256"):  # a Hub file was verified against the Hub's digest
        _check_saved_weights(weights, config["weights_sha256"])
    state = load_local_state_dict(weights, config["architecture"])
    load_fitting_state_dict(model, state, what=str(repo_id_or_dir), reinit_head=reinit_head)
    return model


def _weights_of(
    repo_id_or_dir: str | Path, config: dict[str, Any], revision: str | None, progress: bool, **hub_options: Any
) -> Path:
    """The weights file of a saved model: ``model.safetensors``, or timm's ``pytorch_model.bin`` in a timm folder."""
    from backbones.hub.timm_config import TIMM_WEIGHTS_NAME

    folder = local_folder(repo_id_or_dir)
    if config.get("library_name") == "timm" and folder is not None and not (folder / WEIGHTS_NAME).exists():
        if (folder / TIMM_WEIGHTS_NAME).exists():
            return folder / TIMM_WEIGHTS_NAME
        raise FileNotFoundError(f"{folder} has neither {WEIGHTS_NAME} nor {TIMM_WEIGHTS_NAME} (timm's weights file)")
    return _resolve(repo_id_or_dir, WEIGHTS_NAME, revision, progress, **hub_options)


def _check_saved_weights(weights: Path, expected: str) -> None:
    from backbones.hub.integrity import WeightsIntegrityError, file_sha256

    digest = file_sha256(weights)
    if digest != expected:
        raise WeightsIntegrityError(
            f"{weights} is not the file its {CONFIG_NAME} was saved with (sha256 {digest[:12]}..., recorded "
            f"{expected[:12]}...): it was damaged or replaced after save_pretrained; save the model again"
        )


class HubMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for models built by ``create_model``."""

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        model_card: bool = True,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        **push_to_hub_kwargs: Any,
    ) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a model card ``README.md`` to a folder.

        The folder is written beside the target and swapped in whole, so a reader (or a run
        killed halfway) sees the old folder or the new one, never the new config beside old weights.

        Args:
            save_directory: The folder (created; an existing one is replaced, other files in it kept).
            model_card: Write ``README.md``.
            push_to_hub: Also upload the folder (as the Hugging Face mixins do).
            repo_id: The Hub repo for ``push_to_hub``; default: the folder's name.
            **push_to_hub_kwargs: ``private``, ``token``, ``commit_message``, ``revision``.

        Returns:
            The folder.

        Raises:
            TypeError: ``save_directory`` is not a path (``None``, a number).
            ValueError: An empty folder name, or a model not built by ``create_model``.
            NotADirectoryError: The folder, or one above it, is a file.
            PermissionError: The folder (or the one it would be made in) is read-only.
        """
        import os

        from backbones.core.files import atomic_directory, save_safetensors_atomic
        from backbones.hub.integrity import file_sha256
        from backbones.hub.timm_config import file_layout

        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"save_pretrained needs a folder (a str or os.PathLike), got {save_directory!r}")
        if not str(save_directory).strip():
            raise ValueError("save_pretrained needs a folder name; '' would write into the current folder")
        folder = Path(save_directory).expanduser()
        config = model_config_json(self)  # type: ignore[arg-type]
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        with atomic_directory(folder) as tmp:
            save_safetensors_atomic(state, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
            # The weights' digest in the config: a loader can tell a damaged file, or weights from another save.
            config["weights_sha256"] = file_sha256(tmp / WEIGHTS_NAME)
            on_disk = file_layout(config, num_features=getattr(self, "num_features", None), state_keys=state)
            (tmp / CONFIG_NAME).write_text(json.dumps(on_disk, indent=2) + "\n", encoding="utf-8")
            if model_card:
                from backbones.hub.model_card import render_model_card

                (tmp / CARD_NAME).write_text(render_model_card(config), encoding="utf-8")
        if push_to_hub:
            self.push_to_hub(repo_id or folder.resolve().name, **push_to_hub_kwargs)
        return folder

    @classmethod
    def from_pretrained(
        cls: type[ModelT], repo_id_or_dir: str | Path, *, revision: str | None = None, **overrides: Any
    ) -> ModelT:
        """Load a model saved with ``save_pretrained``, from a folder or a Hub repo id.

        Takes the options of :func:`from_pretrained` (``token``, ``cache_dir``, ``local_files_only``,
        ``force_download``, model overrides).

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

        A bare name (``"my-model"``) goes to your own namespace, as ``create_repo`` decides.

        Returns:
            The URL of the commit.

        Raises:
            WeightsUnavailableError: Offline mode is on, or the Hub cannot be reached.
        """
        from huggingface_hub import HfApi, constants
        from huggingface_hub.errors import OfflineModeIsEnabled

        from backbones.hub.download import (
            HUB_CONNECT_TIMEOUT_S,
            WeightsUnavailableError,
            host_reachable,
            is_offline,
        )

        if is_offline():
            raise WeightsUnavailableError(
                f"cannot push to {repo_id}: offline mode is on (HF_HUB_OFFLINE or BACKBONES_OFFLINE); unset it "
                f"to upload"
            )
        if not host_reachable(constants.ENDPOINT, HUB_CONNECT_TIMEOUT_S):
            raise WeightsUnavailableError(
                f"cannot push to {repo_id}: {constants.ENDPOINT} cannot be reached (no network?)"
            )
        api = HfApi(token=token)
        try:
            created = api.create_repo(repo_id, private=private, exist_ok=True)
            with tempfile.TemporaryDirectory() as scratch:
                folder = self.save_pretrained(Path(scratch) / "model")
                commit = api.upload_folder(
                    repo_id=created.repo_id, folder_path=folder, commit_message=commit_message, revision=revision
                )
        except OfflineModeIsEnabled:
            raise WeightsUnavailableError(f"cannot push to {repo_id}: offline mode is on (HF_HUB_OFFLINE)") from None
        except OSError as err:  # connection errors (httpx, requests) are OSErrors
            raise WeightsUnavailableError(f"cannot push to {repo_id}: {type(err).__name__}: {err}") from None
        return str(getattr(commit, "commit_url", commit))
