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

from backbones import (  # noqa: E402 - torch.hub reads `dependencies` first
    create_model,
    googlenet_v1,
    googlenet_v1_fpn,
    inception_v2,
    inception_v3,
    inception_v3_fpn,
    resnet18,
    resnet18_fpn,
    resnet34,
    resnet34_fpn,
    resnet50,
    resnet50_fpn,
    resnet101,
    resnet101_fpn,
    resnet152,
    resnet152_fpn,
    vgg11,
    vgg11_bn,
    vgg13,
    vgg13_bn,
    vgg16,
    vgg16_bn,
    vgg16_fpn,
    vgg19,
    vgg19_bn,
    vgg19_fpn,
)

__all__ = [
    "create_model",
    "googlenet_v1",
    "googlenet_v1_fpn",
    "inception_v2",
    "inception_v3",
    "inception_v3_fpn",
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
