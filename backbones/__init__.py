"""backbones: classic CNN backbones with torchvision/timm parity, safetensors weights and FPNs.

Example:
    >>> import backbones
    >>> model = backbones.create_model("resnet50", num_classes=10)
    >>> extractor = backbones.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
"""

# `import backbones` imports no torch: each public name is imported on first use (PEP 562), so
# that `backbones --help` answers at once. Two kinds of names are public:
# - the API below, in the form type checkers and IDEs read; __getattr__ reads the same lines
#   (add new exports inside this block; `name as name` marks each as a re-export);
# - every registered architecture (backbones.resnet50, ...): the registry is their one list, so
#   a new family is exported by being registered, and nothing here names a model.
from typing import TYPE_CHECKING, Any

from backbones.core.version import __version__ as __version__

if TYPE_CHECKING:
    from backbones.apps.evaluate import evaluate_model as evaluate_model
    from backbones.apps.extract import extract as extract
    from backbones.apps.extract import load_features as load_features
    from backbones.apps.finetune import FinetuneResult as FinetuneResult
    from backbones.apps.finetune import finetune as finetune
    from backbones.core.features import FeatureInfo as FeatureInfo
    from backbones.core.layers import FrozenBatchNorm2d as FrozenBatchNorm2d
    from backbones.core.registry import UnknownModelError as UnknownModelError
    from backbones.core.registry import split_model_name as split_model_name
    from backbones.data.calibration import calibration_batches as calibration_batches
    from backbones.data.transforms import transforms_for as transforms_for
    from backbones.hub.download import WeightsError as WeightsError
    from backbones.hub.download import WeightsIntegrityError as WeightsIntegrityError
    from backbones.hub.download import WeightsUnavailableError as WeightsUnavailableError
    from backbones.hub.loading import ClassCountMismatchError as ClassCountMismatchError
    from backbones.hub.loading import WeightsFileError as WeightsFileError
    from backbones.hub.loading import WeightsMismatchError as WeightsMismatchError
    from backbones.hub.manifest import register_weights as register_weights
    from backbones.models.backbone import Backbone as Backbone
    from backbones.models.detection import detector as detector
    from backbones.models.detection import save_detector as save_detector
    from backbones.models.extractor import FeatureExtractor as FeatureExtractor
    from backbones.models.factory import create_model as create_model
    from backbones.models.factory import list_models as list_models
    from backbones.models.factory import list_pretrained as list_pretrained
    from backbones.models.factory import register_model as register_model
    from backbones.models.fpn import BackboneWithFPN as BackboneWithFPN
    from backbones.models.fpn import FeaturePyramidNetwork as FeaturePyramidNetwork
    from backbones.models.fpn import fpn_backbone as fpn_backbone
    from backbones.models.inception import GoogLeNet as GoogLeNet
    from backbones.models.inception import Inception3 as Inception3
    from backbones.models.inception import googlenet_loss as googlenet_loss
    from backbones.models.pretrained import from_pretrained as from_pretrained
    from backbones.models.reference import ModelSource as ModelSource
    from backbones.models.reference import resolve_model as resolve_model
    from backbones.models.resnet import BasicBlock as BasicBlock
    from backbones.models.resnet import Bottleneck as Bottleneck
    from backbones.models.resnet import ResNet as ResNet
    from backbones.models.vgg import VGG as VGG
    from backbones.runtime.export import ExportError as ExportError
    from backbones.runtime.export import export as export
    from backbones.runtime.export import load_exported as load_exported
    from backbones.runtime.optimize import OptimizedModel as OptimizedModel
    from backbones.runtime.optimize import optimize as optimize

# Filled on first use: public API name -> the module that defines it (read from the block above).
_API_MODULES: dict[str, str] = {}


def _api_modules() -> dict[str, str]:
    """Public API name -> its module, read from the TYPE_CHECKING block above (torch-free)."""
    if not _API_MODULES:
        import ast
        from pathlib import Path

        tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
        block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
        _API_MODULES.update(
            {
                alias.asname or alias.name: node.module
                for node in block.body
                if isinstance(node, ast.ImportFrom) and node.module
                for alias in node.names
            }
        )
    return _API_MODULES


def _architectures() -> list[str]:
    """Every registered architecture (imports the models layer, and so torch)."""
    import backbones.models  # noqa: F401 - importing the models layer registers every family
    from backbones.models.factory import list_models

    return list_models()


def _public_names() -> list[str]:
    """What ``from backbones import *`` gives: the API, the version and every registered architecture."""
    return sorted({"__version__", *_api_modules(), *_architectures()})


def __getattr__(name: str) -> Any:
    """Import a public name on first use: an API name from its module, an architecture's public builder."""
    import importlib

    if name == "__all__":
        value: Any = _public_names()
    elif name.startswith("_"):  # tools probe dunders (__path__, __wrapped__): never worth importing torch
        raise AttributeError(f"module 'backbones' has no attribute {name!r}")
    else:
        # Whatever is asked for, the model families are registered first (create_model needs them).
        import backbones.models  # noqa: F401 - importing the models layer registers every family
        from backbones.core.registry import UnknownModelError, get_model_entry

        if name in _api_modules():
            value = getattr(importlib.import_module(_api_modules()[name]), name)
        else:
            try:
                entry = get_model_entry(name)
            except UnknownModelError:
                raise AttributeError(f"module 'backbones' has no attribute {name!r}") from None
            if entry.name != name:  # "resnet50.tv2_in1k" is a model name, not an attribute
                raise AttributeError(f"module 'backbones' has no attribute {name!r}")
            # The decorator's public builder lives in the family module under the architecture's name.
            value = getattr(importlib.import_module(entry.builder.__module__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_public_names()})
