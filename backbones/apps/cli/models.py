"""The model argument every command takes, and its ``--pretrained`` option: one spelling, one resolver.

Every command that runs or inspects a model (``predict``, ``features``, ``evaluate``, ``finetune``,
``extract``, ``export``, ``bench``, ``info``, ``summary``) takes the same ``MODEL`` (an
architecture, ``arch.tag``, a ``save_pretrained`` / ``finetune`` folder, a weights file, or an
``OWNER/NAME`` Hub repo) and resolves it with :func:`backbones.models.reference.resolve_model`,
so each says the same thing when one is wrong. Standard library only at import (``--help``).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["MODEL_HELP", "add_model_argument", "add_pretrained_option", "pretrained_choice", "resolve_cli_model"]

MODEL_HELP = (
    "an architecture or arch.tag (resnet50, resnet50.tv2_in1k), a folder written by save_pretrained or finetune, "
    "a weights file, or an OWNER/NAME Hub repo"
)
# What --pretrained may say besides a tag, a weights file or folder, or a Hub repo.
_RANDOM = ("none", "random")
_DEFAULT = "default"


def add_model_argument(command: argparse.ArgumentParser, *, nargs: str | None = None) -> None:
    """The positional ``MODEL`` (see :data:`MODEL_HELP`)."""
    command.add_argument("model", metavar="MODEL", nargs=nargs, help=MODEL_HELP)


def add_pretrained_option(
    command: argparse.ArgumentParser, *, default_weights: bool, aliases: tuple[str, ...] = ()
) -> None:
    """``--pretrained [WEIGHTS]`` for a registered name: a tag, a weights file or folder, a Hub repo, or none.

    Args:
        command: The sub-command's parser.
        default_weights: What the command loads without the option: the default weights
            (``True``) or random ones (``False``); a tag in the name always means its weights.
        aliases: Older spellings kept working (``--weights``).
    """
    without = "its published weights" if default_weights else "random weights"
    command.add_argument(
        "--pretrained",
        *aliases,
        dest="pretrained",
        nargs="?",
        const=_DEFAULT,
        metavar="WEIGHTS",
        help=f"for an architecture: a weight tag (tv_in1k), a weights file or folder, an OWNER/NAME Hub repo, "
        f"'{_DEFAULT}' (also the option alone) or 'none' for random weights (default: the tag in the name, "
        f"else {without}); saved folders, files and Hub repos bring their own",
    )


def pretrained_choice(text: str | None) -> bool | str | None:
    """``--pretrained``'s text as :func:`~backbones.models.reference.resolve_model` takes it.

    ``None`` (not given) stays ``None``; ``default`` is ``True``; ``none`` / ``random`` are ``False``.
    """
    if text is None:
        return None
    if text.lower() == _DEFAULT:
        return True
    return False if text.lower() in _RANDOM else text


def resolve_cli_model(args: argparse.Namespace, *, default_weights: bool, reference: str | None = None) -> Any:
    """The :class:`~backbones.models.reference.ModelSource` of ``MODEL`` (or ``reference``) and ``--pretrained``."""
    from backbones.models.reference import resolve_model

    return resolve_model(
        args.model if reference is None else reference,
        pretrained_choice(getattr(args, "pretrained", None)),
        default=default_weights,
    )
