"""torch.hub entrypoints of backbones.

Each entrypoint is the package's own public builder, so ``torch.hub.load`` and
``backbones.create_model`` take the same path and ``torch.hub.help`` shows the same docstring::

    model = torch.hub.load("path/to/backbones", "resnet50", source="local")   # a checkout
    model = torch.hub.load("OWNER/backbones", "resnet50", pretrained=True, trust_repo=True)
    model = torch.hub.load("OWNER/backbones", "create_model", "resnet50.tv2_in1k", pretrained=True)

(OWNER: the GitHub account that hosts the copy you use.)

Every entrypoint takes ``pretrained`` (False, True, a weight tag or a file path), ``progress``,
``num_classes``, ``features_only`` / ``out_indices`` and the model's own options.
"""

dependencies = ["torch", "safetensors", "huggingface_hub"]

# torch.hub reads `dependencies` first. It offers every public callable here as an entrypoint, so
# the helpers' names start with an underscore.
import backbones as _backbones  # noqa: E402
from backbones import create_model  # noqa: E402

# One entrypoint per registered architecture: the registry is the list, so registering a model
# is all it takes to publish it here.
globals().update({_name: getattr(_backbones, _name) for _name in _backbones.list_models()})

__all__ = ["create_model", *_backbones.list_models()]
