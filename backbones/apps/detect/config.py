"""The detection training recipe: every option of ``backbones detect train``, its default and its checks.

Torch-free, so the command line reads the names and choices while it builds its ``--help``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from backbones.core.vocabulary import dtype_name

__all__ = [
    "COCO_METRICS",
    "DETECTOR_KINDS",
    "DIGIT_SCENES",
    "INVALID_BOXES",
    "RESUME_FIELDS",
    "DetectConfig",
    "coco_percent",
]

DETECTOR_KINDS = ("fasterrcnn", "retinanet", "fcos", "maskrcnn")
# The built-in data set's name on the command line (and in DetectConfig.data).
DIGIT_SCENES = "digit-scenes"
INVALID_BOXES = ("refuse", "drop")
# COCO's bounding-box figures, in the order of pycocotools' COCOeval.stats.
COCO_METRICS = ("AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l", "AR_1", "AR_10", "AR_100", "AR_s", "AR_m", "AR_l")


def coco_percent(value: float | None) -> str:
    """A COCO figure as it is shown: a percentage with one decimal, ``n/a`` where there was nothing to score.

    Example:
        >>> coco_percent(0.4567), coco_percent(None)
        ('45.7', 'n/a')
    """
    return "n/a" if value is None else f"{100 * value:.1f}"


# The precisions training supports (int8 is for inference only).
_TRAINING_DTYPES = ("fp32", "bf16")
# Fields that define what a checkpoint continues: --resume refuses a run that changed one of them.
RESUME_FIELDS = (
    "model",
    "kind",
    "data",
    "canvas",
    "train_scenes",
    "val_scenes",
    "epochs",
    "batch_size",
    "image_size",
    "lr",
    "optimizer",
    "momentum",
    "nesterov",
    "weight_decay",
    "warmup_epochs",
    "clip_grad_norm",
    "dtype",
    "pretrained_backbone",
    "trainable_layers",
    "detector_options",
    "augment",
    "invalid_boxes",
    "seed",
    "world_size",
)


@dataclass
class DetectConfig:
    """Everything a detection training run depends on (the CLI options, one for one).

    Attributes:
        model: An FPN architecture (``"resnet18_fpn"``) the detector is built on.
        data: ``"digit-scenes"`` (built in) or a COCO folder holding ``train/`` and ``val/``, each
            with ``images/`` and ``annotations.json`` (the layout ``detect make-data`` writes).
        out: The output folder (the detector folder plus metrics, curves, checkpoints).
        kind: ``"fasterrcnn"``, ``"retinanet"``, ``"fcos"`` or ``"maskrcnn"`` (torchvision's).
        epochs: Passes over the training scenes.
        batch_size: Images per step in each process.
        image_size: The detector's ``min_size`` (its ``max_size`` scales with it, 800:1333). Default:
            the canvas for the digit scenes, torchvision's 800 for a COCO folder.
        lr: Peak learning rate, reached after the warmup, then a cosine toward 0.
        optimizer: ``"sgd"`` (momentum) or ``"adamw"``.
        momentum: SGD momentum.
        nesterov: SGD with Nesterov momentum.
        weight_decay: Decay on weights (never on norms and biases).
        warmup_epochs: Linear warmup before the cosine; default a fifth of the run, at most 1 epoch.
        clip_grad_norm: Clip the gradient norm to this (``None``: no clipping).
        dtype: ``"fp32"`` or ``"bf16"`` (autocast of the forward pass).
        pretrained_backbone: Start the FPN's body from ImageNet weights (``True``, or an ``arch.tag``).
        trainable_layers: Trainable stages of the body, counted from the top (``None``: the
            detector's default, every stage without pretrained weights).
        detector_options: More options of torchvision's detector class, JSON values only
            (``{"box_batch_size_per_image": 128, "rpn_post_nms_top_n_test": 300}``).
        augment: Horizontal flips and scale jitter on the training scenes.
        invalid_boxes: A box outside its image or without area: ``"refuse"`` (an error naming it)
            or ``"drop"`` (left out).
        canvas: Digit scenes only: the canvas side in pixels (default: the data set's).
        train_scenes: Digit scenes only: training scenes (default: the data set's).
        val_scenes: Digit scenes only: validation scenes (default: the data set's).
        seed: Seed of the initialisation and the shuffle (the digit scenes keep their own seed 0).
        workers: DataLoader workers per process.
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA when available).
        timeout: Under torchrun: seconds a process waits for the others.
        resume: Continue from the last complete checkpoint in ``out``.
        progress: Progress bar and epoch lines on rank 0.
        command: The command line that started the run (for the model card).
    """

    model: str
    data: str
    out: str
    kind: str = "fasterrcnn"
    epochs: int = 12
    batch_size: int = 4
    image_size: int | None = None
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    warmup_epochs: float | None = None
    clip_grad_norm: float | None = None
    dtype: str = "fp32"
    pretrained_backbone: bool | str = False
    trainable_layers: int | None = None
    detector_options: dict[str, Any] | None = None
    augment: bool = True
    invalid_boxes: str = "refuse"
    canvas: int | None = None
    train_scenes: int | None = None
    val_scenes: int | None = None
    seed: int = 0
    workers: int = 0
    device: str | None = None
    timeout: float | None = None
    resume: bool = False
    progress: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        self.data = str(self.data)
        self.out = str(self.out)
        if self.kind not in DETECTOR_KINDS:
            raise ValueError(f"kind={self.kind!r} is not a detector; choose one of {', '.join(DETECTOR_KINDS)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}: choose 'sgd' or 'adamw'")
        if self.invalid_boxes not in INVALID_BOXES:
            raise ValueError(f"invalid_boxes={self.invalid_boxes!r}: choose 'refuse' or 'drop'")
        self.dtype = dtype_name(self.dtype, allowed=_TRAINING_DTYPES, what="dtype")
        for name in ("epochs", "batch_size", "image_size", "canvas", "train_scenes", "val_scenes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be a whole number of at least 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be above 0")
        if self.data != DIGIT_SCENES:
            given = [n for n in ("canvas", "train_scenes", "val_scenes") if getattr(self, n) is not None]
            if given:
                raise ValueError(
                    f"{given[0]}={getattr(self, given[0])!r} sizes the built-in digit scenes only, not the COCO "
                    f"folder {self.data}; drop it"
                )
        if self.warmup_epochs is None:
            self.warmup_epochs = min(1.0, self.epochs / 5)
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs:g} must be at least 0 and shorter than epochs={self.epochs}"
            )

    def as_dict(self) -> dict[str, Any]:
        """The options as a JSON-able dictionary."""
        return dataclasses.asdict(self)
