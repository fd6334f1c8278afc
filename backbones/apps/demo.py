"""The main job behind ``make demo``: real learned weights first, then resnet50_fpn through torch.hub.

It works offline on a fresh machine. First it fine-tunes resnet18 on the built-in handwritten
digits (scikit-learn's, shipped in its wheel) for a few epochs, prints the held-out accuracy,
reloads the saved folder with ``from_pretrained`` and classifies a few held-out digits. Then it
loads resnet50_fpn through torch.hub from this checkout (random weights when none are cached or
reachable, and it says so), prints the network summary, the pyramid's names, shapes and strides
and a throughput figure, writes a picture of every pyramid level, and, when resnet50's ImageNet
weights are available, the top-5 classes of the sample image.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["run_demo", "sample_image"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SIZE = (480, 640)


def sample_image(size: tuple[int, int] = SAMPLE_SIZE) -> torch.Tensor:
    """A deterministic synthetic RGB scene in [0, 1], ``[3, H, W]``: sky, ground, a sun, boxes, stripes.

    Generated rather than shipped, so the project owns it outright.
    """
    height, width = size
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    sky = torch.stack([0.35 + 0.3 * ys, 0.55 + 0.25 * ys, 0.95 - 0.2 * ys])
    ground = torch.stack([0.3 + 0.1 * xs, 0.5 - 0.1 * ys, 0.2 + 0.0 * xs])
    image = torch.where(ys > 0.62, ground, sky)
    sun = ((xs - 0.8) ** 2 + ((ys - 0.2) * height / width) ** 2) < 0.006
    image[:, sun] = torch.tensor([1.0, 0.9, 0.3])[:, None]
    for left, top, w, h, colour in ((0.1, 0.45, 0.18, 0.3, (0.7, 0.2, 0.2)), (0.4, 0.5, 0.25, 0.2, (0.2, 0.3, 0.7))):
        box = (xs > left) & (xs < left + w) & (ys > top) & (ys < top + h)
        image[:, box] = torch.tensor(colour)[:, None]
    stripes = (ys > 0.8) & (torch.sin(xs * 60) > 0)
    image[:, stripes] *= 0.6
    return image.clamp(0, 1)


def _hub_load(entrypoint: str, **kwargs: Any) -> torch.nn.Module:
    if (REPO_ROOT / "hubconf.py").exists():
        return torch.hub.load(str(REPO_ROOT), entrypoint, source="local", **kwargs)
    from backbones.models.factory import create_model  # an installed package without its checkout: same builder

    return create_model(entrypoint, **kwargs)


def _choose_weights(name: str) -> tuple[bool, str]:
    from backbones.core.registry import split_model_name
    from backbones.hub.manifest import get_weight_spec, weights_obtainable

    return weights_obtainable(get_weight_spec(*split_model_name(name)))


def _throughput(model: torch.nn.Module, x: torch.Tensor, seconds: float = 2.0) -> float:
    with torch.inference_mode():
        model(x)  # warm-up
        runs, start = 0, time.perf_counter()
        while runs < 1 or time.perf_counter() - start < seconds:
            model(x)
            runs += 1
    return runs * x.shape[0] / (time.perf_counter() - start)


# The bf16 fast path is faster only with oneDNN's bf16 kernels; elsewhere it runs on the fp32 kernels.
BF16_SKIPPED = "not timed: this CPU has no bf16 instructions oneDNN can use (AVX-512 or AVX-NE-CONVERT)"

DIGITS_EPOCHS = 5
DIGITS_SHOWN = 8


def finetune_digits(out_dir: Path, epochs: int = DIGITS_EPOCHS, shown: int = DIGITS_SHOWN) -> dict[str, Any]:
    """Fine-tune resnet18 on the digits, reload it with ``from_pretrained`` and classify held-out digits.

    Args:
        out_dir: The demo's folder; the model goes to ``out_dir/resnet18-digits`` (replaced on each run).
        epochs: Training epochs.
        shown: How many held-out digits to classify with the reloaded model.

    Returns:
        ``{"folder", "top1", "seconds", "predictions": [(true, predicted, probability), ...]}``.
    """
    import shutil

    from backbones.apps.finetune import finetune
    from backbones.data.datasets import open_dataset
    from backbones.models.pretrained import from_pretrained

    folder = out_dir / "resnet18-digits"
    if (folder / "metrics.jsonl").exists() or (folder / "checkpoints").exists():
        shutil.rmtree(folder)  # the previous demo's run: start afresh rather than resume it
    print(f"backbones demo: fine-tuning resnet18 on scikit-learn's handwritten digits for {epochs} epochs")
    start = time.perf_counter()
    result = finetune("resnet18", "digits", folder, epochs=epochs, command="make demo")
    seconds = time.perf_counter() - start
    print(f"held-out accuracy: top-1 {100 * result.val_top1:.2f}% of 360 digits ({seconds:.0f} s)")
    model = from_pretrained(folder, progress=False).eval()
    held_out = open_dataset("digits", "val", model=model, image_size=model.pretrained_cfg["input_size"][-1])
    images = torch.stack([held_out[i][0] for i in range(shown)])
    with torch.inference_mode():
        probabilities = model(images).softmax(dim=1)
    names = model.pretrained_cfg["class_names"]
    predictions = []
    print(f"reloaded {folder} with from_pretrained; {shown} held-out digits:")
    for index, probs in enumerate(probabilities):
        truth = names[held_out.samples[index][1]]
        best = int(probs.argmax())
        predictions.append((truth, names[best], float(probs[best])))
        mark = "right" if names[best] == truth else "WRONG"
        sample = held_out.samples[index][0]
        print(f"  {sample:<12} is a {truth}: predicted {names[best]} ({100 * float(probs[best]):.1f}%) {mark}")
    print()
    return {"folder": folder, "top1": result.val_top1, "seconds": seconds, "predictions": predictions}


def run_demo(
    out_dir: str | Path = "demo_out", seconds: float = 2.0, digits_epochs: int = DIGITS_EPOCHS
) -> dict[str, Any]:
    """Run the demo, print its report and return the figures (for tests).

    Args:
        out_dir: Where the fine-tuned model and the feature picture go.
        seconds: How long to time the network for the throughput figure.
        digits_epochs: Epochs of the digits fine-tuning; 0 leaves that part out.
    """
    from backbones.apps.analysis import summary
    from backbones.apps.visualize import save_feature_picture
    from backbones.data.transforms import resolve_pretrained_cfg

    out_dir = Path(out_dir)
    digits = finetune_digits(out_dir, digits_epochs) if digits_epochs else None
    print("backbones demo: resnet50_fpn loaded through torch.hub from this checkout (source='local')")
    usable, reason = _choose_weights("resnet50_fpn.tv_coco")
    model = _hub_load("resnet50_fpn", pretrained="tv_coco" if usable else False).eval()
    print(
        f"weights: {'resnet50_fpn.tv_coco (COCO Faster R-CNN backbone)' if usable else 'random initialisation'}"
        f" ({reason})"
    )

    image = sample_image()
    cfg = resolve_pretrained_cfg(model)
    mean, std = torch.tensor(cfg["mean"])[:, None, None], torch.tensor(cfg["std"])[:, None, None]
    x = ((image - mean) / std)[None]
    print()
    print(summary(model, tuple(x.shape), depth=1))
    with torch.inference_mode():
        pyramid = model(x)
    print(f"\npyramid of the {x.shape[2]}x{x.shape[3]} sample image:")
    for info, level in zip(model.feature_info, pyramid.values(), strict=True):
        print(f"  {info.name:<5} {tuple(level.shape)!s:<22} stride {info.stride}")
    from backbones.runtime.fusion import mkldnn_fusion_available
    from backbones.runtime.optimize import optimize

    rates = {
        "eager fp32": _throughput(model, x, seconds),
        "optimized fp32": _throughput(optimize(model, example_input=x), x, seconds),
    }
    native_bf16 = mkldnn_fusion_available(torch.bfloat16)
    if native_bf16:
        rates["optimized bf16"] = _throughput(optimize(model, dtype=torch.bfloat16, example_input=x), x, seconds)
    shown = ", ".join(f"{name} {rate:.2f}" for name, rate in rates.items())
    print(f"throughput (images/s, batch 1, {x.shape[2]}x{x.shape[3]}, {torch.get_num_threads()} threads): {shown}")
    if not native_bf16:
        print(f"optimized bf16: {BF16_SKIPPED}")
    picture = save_feature_picture(
        out_dir / "features.png", image, {k: v[0] for k, v in pyramid.items()}, [f.stride for f in model.feature_info]
    )
    print(f"feature picture: {picture}")

    top5 = classify_sample(image)
    return {
        "weights": reason,
        "pyramid": {k: tuple(v.shape) for k, v in pyramid.items()},
        "throughput": rates,
        "picture": picture,
        "top5": top5,
        "digits": digits,
    }


def classify_sample(image: torch.Tensor) -> list[tuple[str, float]] | None:
    """The demo's last part: resnet50's top-5 ImageNet classes of ``image``, printed, when weights can be had.

    Returns:
        ``[(class name, probability), ...]`` best first, or ``None`` (with the reason printed) when
        no ImageNet weights for resnet50 are cached or reachable.
    """
    usable, reason = _choose_weights("resnet50")
    if not usable:
        print(
            f"resnet50 top-5: skipped, no ImageNet weights ({reason}); "
            "`python -m backbones download resnet50` fetches them"
        )
        return None
    from backbones.data.transforms import transforms_for

    model = _hub_load("resnet50", pretrained=True).eval()
    with torch.inference_mode():
        probabilities = model(transforms_for(model)(image)[None]).softmax(dim=1)[0]
    top = probabilities.topk(5)
    names = model.pretrained_cfg["class_names"]
    result = [(names[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
    print(f"resnet50 top-5 ({model.pretrained_cfg['weights']}, {reason}):")
    for name, p in result:
        print(f"  {p * 100:6.2f}%  {name}")
    return result
