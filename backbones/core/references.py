"""How a string that names a model or its weights reads: a local path, or a Hugging Face Hub repo id.

One rule for the whole package (``from_pretrained``, ``create_model(pretrained=...)``,
``resolve_model`` and the command line): an existing file or folder is that file or folder;
anything that can only be a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, a weights-file suffix,
``a/b`` where ``a`` is a local folder) is a path, missing or not; a remaining ``owner/name`` is a
Hub repo id. Standard library only: the command line reads references before torch is imported.

Example:
    >>> is_hub_repo_id("timm/resnet50.tv_in1k"), is_hub_repo_id("resnet50")
    (True, False)
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["CONFIG_NAME", "HUB_REPO_ID", "WEIGHTS_NAME", "WEIGHT_FILE_SUFFIXES", "is_hub_repo_id", "path_like"]

# A saved model (a save_pretrained folder or Hub repo) is these two files, and a model card.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# owner/name on the Hub: each part letters, digits, '-', '_', '.', starting with a letter or digit.
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def is_hub_repo_id(text: str) -> bool:
    """Whether ``text`` is spelt as a Hub repo id (``owner/name``); says nothing of local files."""
    return bool(HUB_REPO_ID.match(text))


def path_like(reference: str | Path) -> bool:
    """Whether ``reference`` can only mean a local path (it need not exist).

    A ``Path``; text starting with ``.``, ``/`` or ``~``; a backslash; more or fewer than one
    ``/`` with a ``/`` present; a weights-file suffix; or ``a/b`` whose ``a`` is a local folder.
    """
    if isinstance(reference, Path):
        return True
    text = str(reference)
    first = text.split("/", 1)[0]
    return (
        text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") > 1
        or text.lower().endswith(WEIGHT_FILE_SUFFIXES)
        or ("/" in text and Path(first).expanduser().is_dir())
    )
