"""backbones: classic CNN backbones with torchvision/timm parity, safetensors weights and FPNs.

Example:
    >>> import backbones
    >>> model = backbones.create_model("resnet50", num_classes=10)
    >>> extractor = backbones.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
"""

from ._registry import (
    UnknownModelError,
    create_model,
    list_models,
    list_pretrained,
    register_model,
    split_model_name,
)
from .base import Backbone
from .features import FeatureExtractor, FeatureInfo
from .inception import GoogLeNet, Inception3, googlenet_loss, googlenet_v1, inception_v2, inception_v3
from .layers import FrozenBatchNorm2d
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .vgg import VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn

__version__ = "0.1.0"

__all__ = [
    "VGG",
    "Backbone",
    "BasicBlock",
    "Bottleneck",
    "FeatureExtractor",
    "FeatureInfo",
    "FrozenBatchNorm2d",
    "GoogLeNet",
    "Inception3",
    "ResNet",
    "UnknownModelError",
    "__version__",
    "create_model",
    "googlenet_loss",
    "googlenet_v1",
    "inception_v2",
    "inception_v3",
    "list_models",
    "list_pretrained",
    "register_model",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "split_model_name",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]
