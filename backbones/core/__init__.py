"""Layer 1, core: the registry of names, the input and feature contracts, shared layers.

Imports only torch. Nothing here knows of weights, files or applications.
"""
