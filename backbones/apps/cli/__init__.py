"""The command line: ``python -m backbones <command>``; one module per group of commands."""
