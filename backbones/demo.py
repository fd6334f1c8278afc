"""The main job behind ``make demo``: load a backbone through torch.hub from this checkout and run it."""

from __future__ import annotations

import time
from pathlib import Path

import torch

__all__ = ["run_demo"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def sample_image(size: int = 224) -> torch.Tensor:
    """A deterministic synthetic RGB image in [0, 1]: shapes and gradients with some structure."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((xs + 0.3) ** 2 + (ys + 0.2) ** 2 < 0.2).float()
    square = ((xs - 0.4).abs() < 0.25).float() * ((ys - 0.35).abs() < 0.25).float()
    stripes = 0.5 + 0.5 * torch.sin(12 * xs + 6 * ys)
    return torch.stack([0.6 * disc + 0.4 * stripes, 0.8 * square + 0.2 * stripes, 0.5 + 0.5 * ys]).clamp(0, 1)


def run_demo(out_dir: str | Path = "demo_out") -> None:
    """Load resnet50 through torch.hub's own code (this checkout), run it on a sample image, report."""
    model = torch.hub.load(str(REPO_ROOT), "create_model", "resnet50", features_only=True, source="local")
    model.eval()
    image = sample_image()
    cfg = model.pretrained_cfg
    x = ((image - torch.tensor(cfg["mean"])[:, None, None]) / torch.tensor(cfg["std"])[:, None, None])[None]
    with torch.inference_mode():
        features = model(x)
        start = time.perf_counter()
        runs = 3
        for _ in range(runs):
            model(x)
        per_image = (time.perf_counter() - start) / runs
    print("weights: random initialisation (no pretrained weights requested)")
    print(f"{'stage':<8} {'shape':<22} stride")
    for info, fmap in zip(model.feature_info, features.values(), strict=False):
        print(f"{info.name:<8} {tuple(fmap.shape)!s:<22} {info.stride}")
    print(f"throughput: {1 / per_image:.1f} images/s (batch 1, {torch.get_num_threads()} threads)")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
