"""Layer 2, weights and the Hub: the manifest, download and verification, conversion, loading.

Imports only ``backbones.core`` (and torch, safetensors, huggingface_hub).
"""
