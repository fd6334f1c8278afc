"""Layer 6, applications: analysis, pictures, benchmark, fine-tuning, extraction, demo and the CLI.

Imports any layer below; nothing below imports it.
"""
