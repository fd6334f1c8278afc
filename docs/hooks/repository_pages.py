"""An MkDocs hook: publish the repository's reports and guides that live outside ``docs/`` as pages.

``benchmarks/RESULTS.md`` and its siblings are written by the benchmark scripts and live beside
them; ``CHANGELOG.md`` and ``CONTRIBUTING.md`` live at the top, where GitHub shows them. A copy
in ``docs/`` would go stale, and strict mode refuses relative links out of ``docs/``. This hook
adds the files to the site as they are, at their repository paths: a page links
``benchmarks/RESULTS.md`` or ``CHANGELOG.md``, strict mode checks that link, and the reports' own
links (``speedups.png``) keep working.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

REPOSITORY = Path(__file__).resolve().parents[2]
# The pages and the pictures they show; the scripts that write the reports are not published.
PUBLISHED = ("CHANGELOG.md", "CONTRIBUTING.md", "benchmarks/*.md", "benchmarks/*.png")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add each published file to the site at its repository path."""
    for pattern in PUBLISHED:
        for path in sorted(REPOSITORY.glob(pattern)):
            src_uri = path.relative_to(REPOSITORY).as_posix()
            files.append(File.generated(config, src_uri, abs_src_path=str(path)))
    return files
