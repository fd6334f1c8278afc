"""``python -m backbones``: the command line (see ``backbones.cli``)."""

from .cli import main

raise SystemExit(main())
