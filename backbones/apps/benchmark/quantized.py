"""torchvision's int8 peers, and the calibration every int8 variant shares.

torchvision's post-training-quantized models (eager-mode prepare/convert on the x86 engine); the
engines' int8 (onnxruntime QDQ, OpenVINO NNCF) live in :mod:`backbones.apps.benchmark.engines`.
Each is built from the same float weights and calibrated on the same batches as ours, so the
ratios compare engines, not data.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

__all__ = ["TORCHVISION_QUANTIZED", "calibration", "torchvision_quantized"]

# torchvision's post-training-quantizable models (x86 engine), by our architecture name.
TORCHVISION_QUANTIZED = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "googlenet_v1": "googlenet",
    "inception_v3": "inception_v3",
}
CALIBRATION_BATCHES, CALIBRATION_BATCH_SIZE = 4, 8
# Larger inputs (the FPN's) calibrate on fewer batches, as many pixels as 4 x 8 images at 299x299:
# the histogram observers' cost grows with the pixels, and at the FPN's sizes a full set of batches
# would take longer to calibrate than the variants take to time.
CALIBRATION_PIXELS = CALIBRATION_BATCHES * CALIBRATION_BATCH_SIZE * 299 * 299


def calibration(model: nn.Module, example: torch.Tensor | None) -> list[torch.Tensor]:
    """The calibration batches every int8 variant shares: the digits at the workload's input size.

    Args:
        model: Our model (its preprocessing shapes the digits).
        example: The workload's input (the FPN's, not square), or None for the model's own input size.

    Returns:
        Up to ``CALIBRATION_BATCHES`` batches of ``CALIBRATION_BATCH_SIZE`` images, fewer for large inputs.
    """
    from backbones.data.calibration import calibration_batches

    size = example.shape[-1] if example is not None else model.pretrained_cfg["input_size"][-1]
    pixels = example.shape[-2] * example.shape[-1] if example is not None else size * size
    count = min(CALIBRATION_BATCHES, max(1, round(CALIBRATION_PIXELS / (CALIBRATION_BATCH_SIZE * pixels))))
    batches = calibration_batches(model, "digits", batches=count, batch_size=CALIBRATION_BATCH_SIZE, image_size=size)
    if example is not None and example.shape[-2] != example.shape[-1]:  # FPN workloads are not square
        batches = [nn.functional.interpolate(b, size=example.shape[-2:], mode="bilinear") for b in batches]
    return batches


def torchvision_quantized(arch: str, reference: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """torchvision's quantizable ``arch`` with ``reference``'s weights, quantized as torchvision does.

    Fused modules, the x86 engine's default qconfig, eager-mode prepare/convert.

    Args:
        arch: One of :data:`TORCHVISION_QUANTIZED`.
        reference: torchvision's float model of ``arch``, whose weights are copied.
        batches: The calibration batches (:func:`calibration`).

    Returns:
        The converted int8 model.
    """
    import torchvision.models.quantization as tvq
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    from backbones.runtime.quantize import select_x86_engine

    engine = select_x86_engine()
    options = {} if arch.startswith("resnet") else {"aux_logits": False, "init_weights": False}
    model = getattr(tvq, TORCHVISION_QUANTIZED[arch])(weights=None, quantize=False, **options).eval()
    model.load_state_dict(reference.state_dict())
    with warnings.catch_warnings():
        # torch.ao's eager flow warns on every call (its deprecation, observer and quantized-tensor
        # notes): noise in the benchmark's log, nothing about this run.
        warnings.simplefilter("ignore")
        model.fuse_model(is_qat=False)
        model.qconfig = get_default_qconfig(engine)
        prepare(model, inplace=True)
        with torch.no_grad():
            for batch in batches:
                model(batch)
        return convert(model, inplace=True)
