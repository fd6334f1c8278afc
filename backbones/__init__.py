"""backbones: classic CNN backbones with torchvision/timm parity, safetensors weights and FPNs.

Example:
    >>> import backbones
    >>> model = backbones.create_model("resnet50", num_classes=10)
    >>> extractor = backbones.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
"""

# `import backbones` imports no torch: each public name is imported on first use (PEP 562), so
# that `backbones --help` answers at once. The imports below are that list, in the form type
# checkers and IDEs read; __getattr__ reads the same lines (add new exports inside this block).
from typing import TYPE_CHECKING

from backbones.core.version import __version__

if TYPE_CHECKING:
    from backbones.apps.evaluate import evaluate_model
    from backbones.apps.extract import extract, load_features
    from backbones.apps.finetune import FinetuneResult, finetune
    from backbones.core.features import FeatureInfo
    from backbones.core.layers import FrozenBatchNorm2d
    from backbones.core.registry import UnknownModelError, split_model_name
    from backbones.data.calibration import calibration_batches
    from backbones.data.transforms import transforms_for
    from backbones.hub.download import WeightsError, WeightsIntegrityError, WeightsUnavailableError
    from backbones.hub.loading import ClassCountMismatchError, WeightsFileError, WeightsMismatchError
    from backbones.hub.manifest import register_weights
    from backbones.models.backbone import Backbone
    from backbones.models.extractor import FeatureExtractor
    from backbones.models.factory import create_model, list_models, list_pretrained, register_model
    from backbones.models.fpn import (
        BackboneWithFPN,
        FeaturePyramidNetwork,
        fpn_backbone,
        googlenet_v1_fpn,
        inception_v3_fpn,
        resnet18_fpn,
        resnet34_fpn,
        resnet50_fpn,
        resnet101_fpn,
        resnet152_fpn,
        vgg16_fpn,
        vgg19_fpn,
    )
    from backbones.models.inception import (
        GoogLeNet,
        Inception3,
        googlenet_loss,
        googlenet_v1,
        inception_v2,
        inception_v3,
    )
    from backbones.models.pretrained import from_pretrained
    from backbones.models.resnet import (
        BasicBlock,
        Bottleneck,
        ResNet,
        resnet18,
        resnet34,
        resnet50,
        resnet101,
        resnet152,
    )
    from backbones.models.vgg import VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn
    from backbones.runtime.export import ExportError, export
    from backbones.runtime.optimize import OptimizedModel, optimize

__all__ = [
    "VGG",
    "Backbone",
    "BackboneWithFPN",
    "BasicBlock",
    "Bottleneck",
    "ClassCountMismatchError",
    "ExportError",
    "FeatureExtractor",
    "FeatureInfo",
    "FeaturePyramidNetwork",
    "FinetuneResult",
    "FrozenBatchNorm2d",
    "GoogLeNet",
    "Inception3",
    "OptimizedModel",
    "ResNet",
    "UnknownModelError",
    "WeightsError",
    "WeightsFileError",
    "WeightsIntegrityError",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "__version__",
    "calibration_batches",
    "create_model",
    "evaluate_model",
    "export",
    "extract",
    "finetune",
    "fpn_backbone",
    "from_pretrained",
    "googlenet_loss",
    "googlenet_v1",
    "googlenet_v1_fpn",
    "inception_v2",
    "inception_v3",
    "inception_v3_fpn",
    "list_models",
    "list_pretrained",
    "load_features",
    "optimize",
    "register_model",
    "register_weights",
    "resnet18",
    "resnet18_fpn",
    "resnet34",
    "resnet34_fpn",
    "resnet50",
    "resnet50_fpn",
    "resnet101",
    "resnet101_fpn",
    "resnet152",
    "resnet152_fpn",
    "split_model_name",
    "transforms_for",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg16_fpn",
    "vgg19",
    "vgg19_bn",
    "vgg19_fpn",
]


def _export_modules() -> dict[str, str]:
    """Public name -> the module it comes from, read from the TYPE_CHECKING block above."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    return {
        alias.asname or alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("backbones.")
        for alias in node.names
    }


_EXPORT_MODULES: dict[str, str] = {}


def __getattr__(name: str) -> object:
    import importlib

    if not _EXPORT_MODULES:
        _EXPORT_MODULES.update(_export_modules())
    if name not in _EXPORT_MODULES:
        raise AttributeError(f"module 'backbones' has no attribute {name!r}")
    # Whatever is asked for, the model families are registered first (create_model needs them).
    importlib.import_module("backbones.models")
    value = getattr(importlib.import_module(_EXPORT_MODULES[name]), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
