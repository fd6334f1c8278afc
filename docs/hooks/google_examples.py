"""A griffe extension: read the code's ``Example:`` docstring sections as examples.

The package's docstrings follow Google style, whose guide spells the section ``Example:`` as
well as ``Examples:``. griffe's Google parser knows only ``Examples:``, and renders an
``Example:`` section as an admonition of Markdown, where a ``>>>`` line becomes a quotation and
``model.feature_info[-1]`` a broken reference link. This renames the heading before griffe parses
the docstring, so every example renders as a code block and nothing in the sources changes.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

EXAMPLE_HEADING = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)


class GoogleExampleSections(griffe.Extension):
    """Rename each ``Example:`` section heading to ``Examples:``."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the heading in this object's docstring, once the object tree is complete."""
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE_HEADING.sub(r"\g<indent>Examples:", obj.docstring.value)
