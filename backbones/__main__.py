"""``python -m backbones``: the command line (see ``backbones.cli``)."""

from backbones.apps.cli.main import main

raise SystemExit(main())
