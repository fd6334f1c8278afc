"""The fine-tuning recipe: every option of ``backbones finetune``, its default and its checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbones.core.vocabulary import dtype_name

__all__ = [
    "DEFAULT_WARMUP_EPOCHS",
    "MAX_DEFAULT_WARMUP_SHARE",
    "OPTIMIZERS",
    "RESUME_FIELDS",
    "TRAINING_DTYPES",
    "FinetuneConfig",
]

OPTIMIZERS = ("sgd", "adamw")
# The precisions of the shared vocabulary that training supports (int8 is for inference only).
TRAINING_DTYPES = ("fp32", "bf16")
# Learning rate and weight decay when not given: SGD's is the digits recipe (benchmarks/FINETUNE.md
# holds its results); AdamW's the usual fine-tuning values.
_DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}
_DEFAULT_WEIGHT_DECAY = {"sgd": 5e-5, "adamw": 0.05}
# The default warmup: one epoch, but never more than this share of the run, so a short run still
# decays its learning rate (a one-epoch run warmed up for its whole length never leaves the peak).
DEFAULT_WARMUP_EPOCHS, MAX_DEFAULT_WARMUP_SHARE = 1.0, 0.2
# Fields that define what a checkpoint continues: --resume refuses a run that changed one of them.
RESUME_FIELDS = (
    "model",
    "data",
    "val_data",
    "val_fraction",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "nesterov",
    "weight_decay",
    "warmup_epochs",
    "label_smoothing",
    "clip_grad_norm",
    "dtype",
    "pretrained",
    "trainable_stages",
    "freeze_norm",
    "augment",
    "image_size",
    "seed",
    "world_size",
)


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (the CLI options, one for one).

    Options that would be ignored beside another are refused (see ``_CONFLICTS``): ``val_data``
    with the digits, ``val_fraction`` with ``val_data``, ``skip_bad_images`` with the digits,
    ``momentum`` / ``nesterov`` with AdamW, ``sync_bn`` with ``freeze_norm``.

    Attributes:
        model: A registered classification architecture (``"resnet18"``, ``"resnet50.tv2_in1k"``)
            or a folder written by ``save_pretrained``.
        data: ``"digits"`` or an image folder (one subfolder per class).
        out: The output folder (a ``save_pretrained`` folder plus metrics, curves, checkpoints).
        epochs: Passes over the training data.
        batch_size: Images per step in each process (the global batch is this times the processes).
        lr: Peak learning rate (default: 0.05 for SGD, 1e-3 for AdamW), reached after the warmup.
        optimizer: ``"sgd"`` (momentum, nesterov) or ``"adamw"``.
        momentum: SGD momentum.
        nesterov: SGD with Nesterov momentum.
        weight_decay: Decay on weights (never on norms and biases); default per optimizer.
        warmup_epochs: Linear warmup from 0, then cosine decay to 0 over the remaining steps. Must
            be shorter than ``epochs``. Default (``None``): 1 epoch, or a fifth of a run shorter
            than 5 epochs.
        label_smoothing: Cross-entropy label smoothing.
        clip_grad_norm: Clip the global gradient norm to this (``None``: no clipping).
        dtype: ``"fp32"``, or ``"bf16"`` autocast for the forward pass (the long names
            ``"float32"`` / ``"bfloat16"`` and torch dtypes are read as these).
        pretrained: For an architecture, start from these weights, with a fresh head for the
            data's classes: ``True`` (the default tag), a tag such as ``"tv_in1k"``, a weights file
            or folder, or a Hub repo. ``None`` / ``False``: random initialisation (``None`` with a
            tag in the name: that tag's weights). A saved folder, file or Hub repo given as
            ``model`` starts from its own weights.
        trainable_stages: Train only the last K stages of ``model.feature_info`` (the FPN's
            split) and the head; ``None`` trains everything; 0 trains the head only.
        freeze_norm: Keep BatchNorm statistics and affine parameters fixed (eval-mode BatchNorm).
        augment: Training augmentation: folders a random resized crop and flip, digits random shifts
            of up to one original pixel. Default (``None``): on for folders, off for the digits (5
            epochs reach a higher accuracy without it; see benchmarks/FINETUNE.md).
        image_size: Input size (default: ``max(32, model minimum)`` on digits, the crop size on folders).
        val_data: A validation folder; otherwise ``val_fraction`` of ``data`` (stratified, seeded).
            Not with the digits (they are split), nor with a ``val_fraction`` of its own.
        val_fraction: Share of ``data`` held out for validation.
        seed: Seed of the initialisation, the split, the shuffle and the augmentation.
        deterministic: Deterministic algorithms only (``torch.use_deterministic_algorithms``).
        workers: DataLoader worker processes per training process.
        skip_bad_images: Skip unreadable images (and report them) instead of stopping.
        sync_bn: Convert BatchNorm to SyncBatchNorm (CUDA with several processes only).
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA when available).
        resume: Continue from the last complete checkpoint in ``out``.
        timeout: Seconds a process waits for the others under torchrun before it stops, naming the
            rank that is gone (default: ``backbones.apps.parallel.DEFAULT_TIMEOUT``, 300).
        progress: Show a progress bar (rank 0 only).
        command: The command line recorded in the model card.
    """

    model: str
    data: str
    out: str
    epochs: int = 5
    batch_size: int = 64
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    label_smoothing: float = 0.0
    clip_grad_norm: float | None = None
    dtype: str = "fp32"
    pretrained: bool | str | None = None
    trainable_stages: int | None = None
    freeze_norm: bool = False
    augment: bool | None = None
    image_size: int | None = None
    val_data: str | None = None
    val_fraction: float = 0.2
    seed: int = 0
    deterministic: bool = False
    workers: int = 0
    skip_bad_images: bool = False
    sync_bn: bool = False
    device: str | None = None
    resume: bool = False
    timeout: float | None = None
    progress: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        self.model, self.data, self.out = str(self.model), str(self.data), str(self.out)
        if self.val_data is not None:
            self.val_data = str(self.val_data)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        self.dtype = dtype_name(self.dtype, allowed=TRAINING_DTYPES, what="finetune's dtype")
        if self.lr is None:
            self.lr = _DEFAULT_LR[self.optimizer]
        if self.weight_decay is None:
            self.weight_decay = _DEFAULT_WEIGHT_DECAY[self.optimizer]
        _check_positive(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        _check_conflicts(self)
        self.warmup_epochs = _warmup_epochs(self.warmup_epochs, self.epochs)
        _check_non_negative(
            weight_decay=self.weight_decay,
            warmup_epochs=self.warmup_epochs,
            workers=self.workers,
            momentum=self.momentum,
        )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"clip_grad_norm must be positive (or None for no clipping), got {self.clip_grad_norm}")
        if self.trainable_stages is not None and self.trainable_stages < 0:
            raise ValueError(f"trainable_stages must be 0 or more, got {self.trainable_stages}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"out='{self.out}' is a file; give a folder for the fine-tuned model")

    def as_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict (what the checkpoint and metrics record)."""
        return dataclasses.asdict(self)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be 0 or more, got {value}")


def _warmup_epochs(warmup_epochs: float | None, epochs: int) -> float:
    """The warmup a run gets: the default scaled to a short run; a given one must end before the run does."""
    if warmup_epochs is None:
        return min(DEFAULT_WARMUP_EPOCHS, MAX_DEFAULT_WARMUP_SHARE * epochs)
    if warmup_epochs >= epochs > 0:
        raise ValueError(
            f"warmup_epochs={warmup_epochs:g} is not shorter than the run (epochs={epochs}): the learning rate "
            f"would never leave the warmup; give a warmup below {epochs} epochs, or none for the default (1 epoch, "
            f"a fifth of a shorter run)"
        )
    return float(warmup_epochs)


# Any value but the field's default: the side of a conflict that an option given at all makes.
_GIVEN = object()
# Pairs of options that do not go together: with the second one set, the first would be silently
# ignored (or do nothing). One rule reads them all: (field, value, other field, other value, why).
_CONFLICTS: tuple[tuple[str, Any, str, Any, str], ...] = (
    ("val_data", _GIVEN, "data", "digits", "the built-in digits are split by the validation fraction"),
    (
        "val_fraction",
        _GIVEN,
        "val_data",
        _GIVEN,
        "a validation folder is all of the validation data, nothing is held out",
    ),
    ("skip_bad_images", True, "data", "digits", "the built-in digits are arrays, no image file can be unreadable"),
    ("momentum", _GIVEN, "optimizer", "adamw", "momentum is SGD's, AdamW has none"),
    ("nesterov", _GIVEN, "optimizer", "adamw", "Nesterov momentum is SGD's, AdamW has none"),
    ("sync_bn", True, "freeze_norm", True, "frozen BatchNorm uses its stored statistics and synchronises nothing"),
)


def _check_conflicts(config: FinetuneConfig) -> None:
    """Refuse the first pair of :data:`_CONFLICTS` that ``config`` sets, naming both options and why."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}

    def sets(name: str, value: Any) -> bool:
        actual = getattr(config, name)
        return actual != defaults[name] if value is _GIVEN else actual == value

    for name, value, other, other_value, why in _CONFLICTS:
        if sets(name, value) and sets(other, other_value):
            raise ValueError(
                f"{name}={getattr(config, name)!r} does not go with {other}={getattr(config, other)!r}: {why}; "
                f"drop one of the two"
            )
