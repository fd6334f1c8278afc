"""The model API every classification network shares (timm's API, torchvision's keys)."""

# No `from __future__ import annotations`: torch.fx copies forward's annotations into generated
# code, which TorchScript must be able to read.
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch import Tensor

from backbones.core.features import FeatureInfo, FeatureInfoList
from backbones.core.inputs import IMAGENET_DEFAULT_CFG, check_image_batch
from backbones.core.options import check_model_options
from backbones.models.extractor import FeatureExtractor
from backbones.models.pretrained import HubMixin

__all__ = ["Backbone"]

# A leaf for torch.fx: the check runs at run time inside feature extractors instead of being
# evaluated (and failing on proxies) while tracing.
torch.fx.wrap("check_image_batch")


class Backbone(nn.Module, HubMixin):
    """Base class of the classification networks: one API across VGG, Inception and ResNet.

    Subclasses build their layers, then call :meth:`_set_feature_info`, and implement
    :meth:`forward_features`. The default head is global average pooling, dropout and the
    ``fc`` layer; families with another head override :meth:`forward_head` and set
    ``classifier_name``.

    Attributes:
        num_classes: Outputs of the classifier (0 after ``reset_classifier(0)``).
        in_chans: Input channels the first convolution expects.
        num_features: Channels of ``forward_features``' output.
        head_hidden_size: Width of the pre-logits features (the final layer's input).
        feature_info: A :class:`FeatureInfo` (name, channels, stride, module) per stage.
        min_input_size: The smallest height and width accepted; below it the deepest stage
            would be degenerate (its stride not honoured) or the network could not compute.
        pretrained_cfg: Input size, resize/crop, interpolation, mean, std and class names.
    """

    classifier_name: str = "fc"
    first_conv: str = ""  # state-dict key of the first convolution's weight (adapted for in_chans)

    def __init__(self, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = 0
        self.head_hidden_size = 0
        self.min_input_size = 1
        self.feature_info: FeatureInfoList = FeatureInfoList()
        self.pretrained_cfg: dict[str, Any] = dict(IMAGENET_DEFAULT_CFG, num_classes=num_classes)

    def _set_feature_info(self, feature_info: "list[FeatureInfo]", min_input_size: int = 1) -> None:
        self.feature_info = FeatureInfoList(feature_info)
        self.num_features = feature_info[-1].channels
        self.head_hidden_size = self.head_hidden_size or self.num_features
        self.min_input_size = max(min_input_size, max(f.stride for f in feature_info))

    def feature_extractor(self, out_indices: "Iterable[int] | None" = None) -> FeatureExtractor:
        """This network cut into stages: what ``create_model(..., features_only=True)`` returns.

        Example:
            >>> extractor = backbones.create_model("resnet18").feature_extractor((2, 4))
            >>> [f.name for f in extractor.feature_info]
            ['layer2', 'layer4']
        """
        return FeatureExtractor(self, out_indices)

    def check_input(self, x: Tensor) -> Tensor:
        """Validate an input batch (see :func:`check_image_batch`) and return it unchanged.

        In training mode a batch of one image is also checked against every BatchNorm, which needs
        more than one value per channel (see :meth:`_check_trainable_batch`).
        """
        weight: Tensor | None = None if torch.jit.is_scripting() else self._dtype_reference()
        x = check_image_batch(x, self.in_chans, self.min_input_size, weight)
        if not torch.jit.is_scripting():
            self._check_trainable_batch(x)
        return x

    @torch.jit.unused
    def _check_trainable_batch(self, x: Tensor) -> None:
        """Refuse, up front, one training image that some BatchNorm would see as a single value per channel.

        Where that happens depends on every padding and pooling of the family (a ResNet at 32x32,
        a GoogLeNet up to 63x63), so instead of a formula per family the model itself runs once on
        the meta device: shapes only, no arithmetic, no weight touched; torch's own BatchNorm check
        then says whether the real batch would fail. Only a training batch of one pays for it.

        Raises:
            ValueError: The input size, the shape the BatchNorm would see, and the fixes.
        """
        if not self.training or isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling():
            return
        if x.shape[0] != 1 or x.device.type == "meta":  # a meta input is the probe itself (or a skeleton)
            return
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not any(m.training for m in norms) or any(isinstance(m, nn.SyncBatchNorm) for m in norms):
            return  # no batch statistics to compute; SyncBatchNorm would communicate, even on meta
        on_meta = {k: torch.empty_like(v, device="meta") for k, v in [*self.named_parameters(), *self.named_buffers()]}
        probe = torch.empty(x.shape, dtype=x.dtype, device="meta")
        try:
            torch.func.functional_call(self, on_meta, (probe,), strict=False)
        except ValueError as err:
            if "Expected more than 1 value per channel" not in str(err):
                return  # something else: the real forward reports it
            seen = str(err).rpartition("input size ")[2].replace("torch.Size(", "").rstrip(")")
            raise ValueError(
                f"training on a batch of 1 image of {x.shape[2]}x{x.shape[3]} cannot work: a BatchNorm layer would "
                f"see {seen}, one value per channel, and needs more to compute batch statistics; train with "
                f"batches of 2 or more, use larger images, or call model.eval() for inference"
            ) from None

    @torch.jit.unused
    def _dtype_reference(self) -> Tensor | None:
        # Float inputs must match the weights (float32, or bf16/fp16/fp64 after model.to(...)); under
        # autocast the convolutions cast for themselves.
        if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
            return None
        weight = next(self.parameters(), None)
        return weight if weight is not None and weight.is_floating_point() else None

    def forward(self, x: Tensor) -> Tensor:
        """Classify a batch ``[N, in_chans, H, W]`` into logits ``[N, num_classes]``."""
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: Tensor) -> Tensor:
        """Run the convolutional trunk: ``[N, C, H, W]`` -> ``[N, num_features, H/32, W/32]``."""
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool and classify trunk features; ``pre_logits=True`` stops before the last layer."""
        x = torch.flatten(self.avgpool(x), 1)
        x = self.dropout(x)
        if pre_logits:
            return x
        return self.fc(x)

    def get_classifier(self) -> nn.Module:
        """Return the final classification layer."""
        return self.get_submodule(self.classifier_name)

    def head_layer_names(self) -> list[str]:
        """Names of the layers whose outputs are classes (the classifier and any auxiliary ones)."""
        return [self.classifier_name] if self.num_classes else []

    def unbuilt_checkpoint_prefixes(self) -> list[str]:
        """Key prefixes a full checkpoint has and this model, by choice, does not (no classifier)."""
        return [] if self.num_classes else [self.classifier_name + "."]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer with a freshly initialised one for ``num_classes`` outputs.

        ``num_classes=0`` removes it: the model then returns pre-logit features.

        Example:
            >>> model = backbones.create_model("resnet18")
            >>> model.reset_classifier(10)
            >>> model(torch.randn(2, 3, 64, 64)).shape
            torch.Size([2, 10])

        Raises:
            ValueError: ``num_classes`` is not an int from 0 to 100,000 (the model is left unchanged).
        """
        check_model_options({"num_classes": num_classes})
        self.num_classes = num_classes
        head = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()
        self.set_submodule(self.classifier_name, head)
        self.pretrained_cfg = dict(self.pretrained_cfg, num_classes=num_classes, class_names=None)
        if hasattr(self, "model_config"):
            self.model_config = dict(self.model_config, num_classes=num_classes)
