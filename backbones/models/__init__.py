"""Layer 3, models: the families (ResNet, VGG, Inception), the FPN, and building them by name.

``factory.create_model`` composes the registry (core) with weights (hub); every model class
carries ``save_pretrained`` / ``from_pretrained`` (``pretrained.HubMixin``). Imports only
``backbones.core`` and ``backbones.hub``.
"""

# Importing any part of the models layer registers every family, so create_model("resnet50")
# works whichever module was imported first.
from backbones.models import fpn, inception, resnet, vgg  # noqa: F401
