"""Layer 3, models: the families (ResNet, VGG, Inception), the FPN, and building them by name.

``factory.create_model`` composes the registry (core) with weights (hub); every model class
carries ``save_pretrained`` / ``from_pretrained`` (``pretrained.HubMixin``). Imports only
``backbones.core`` and ``backbones.hub``.
"""
