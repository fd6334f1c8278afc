"""Layer 4, runtime: inference fast paths (BatchNorm folding, oneDNN fusion, bf16, int8) and export.

Imports only the layers below (core, hub, models).
"""
