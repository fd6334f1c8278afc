"""``detect predict``: a saved detector's boxes on images, drawn (PNG) or as COCO-style results (JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from backbones.apps.detect.evaluate import coco_results
from backbones.apps.detect.output import read_detection_config

__all__ = ["detect_predict", "draw_detections", "image_files"]


def image_files(paths: list[str | Path]) -> list[Path]:
    """The images ``paths`` name: files as given, folders' images sorted by name.

    Raises:
        FileNotFoundError: A path does not exist, or a folder holds no image.
    """
    from backbones.data.images import is_image_file

    files: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not found:
                raise FileNotFoundError(f"{path} holds no image file; give images or a folder of them")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {path}")
    return files


def _read(path: Path) -> torch.Tensor:
    import numpy as np

    from backbones.data.images import decode_image

    array = np.asarray(decode_image(path), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def draw_detections(image: torch.Tensor, detections: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    """``image`` (uint8 CHW) with the boxes drawn and labelled ``name score`` (torchvision's draw_bounding_boxes)."""
    from torchvision.utils import draw_bounding_boxes

    labels = [
        f"{_name(names, int(k))} {float(s):.2f}"
        for k, s in zip(detections["labels"], detections["scores"], strict=True)
    ]
    width = max(1, round(max(image.shape[-2:]) / 200))
    return draw_bounding_boxes(image, detections["boxes"].float(), labels=labels, colors="red", width=width)


def _name(names: list[str], label: int) -> str:
    return names[label] if 0 <= label < len(names) else str(label)


@torch.no_grad()
def detect_predict(
    folder: str | Path,
    images: list[str | Path],
    *,
    score: float = 0.5,
    draw: bool = True,
    out: str | Path | None = None,
    json_file: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Detect objects in images with a saved detector; draw them, list them as COCO-style results, or both.

    Args:
        folder: A detector folder (``detect train``'s output or any :func:`save_detector` folder).
        images: Image files or folders of them.
        score: Keep detections scoring at least this (0..1).
        draw: Draw the boxes, labels and scores on the images.
        out: Where drawings go: the PNG for one image, else a folder with one ``NAME.png`` per
            image (default ``boxes.png`` / ``boxes``).
        json_file: Also write the results there as JSON (default: only returned).
        device: Where the detector runs.

    Returns:
        ``{"results": [...], "written": [paths]}``: each result ``{"file", "image_id",
        "category_id", "label", "bbox" [x, y, w, h], "score"}`` (``image_id``: the image's index).

    Raises:
        ValueError: ``score`` is not in 0..1.
        FileNotFoundError: An image or folder is missing.
    """
    import json

    from backbones.core.files import atomic_path, atomic_write_text
    from backbones.models.detection import detector

    if not 0 <= score <= 1:
        raise ValueError(f"score={score!r} must be from 0 to 1")
    files = image_files(list(images))
    model = detector(folder).eval().to(device)
    config = model.detector_config
    names = list(config.get("class_names") or [str(i) for i in range(config["num_classes"])])
    recorded = (read_detection_config(Path(folder)).get("detection") or {}).get("category_ids") or {}
    category_ids = {label: int(recorded.get(str(label), label)) for label in range(config["num_classes"])}
    results: list[dict[str, Any]] = []
    written: list[Path] = []
    drawings = _drawing_paths(files, out) if draw else None
    for index, path in enumerate(files):
        image = _read(path)
        found = model([image.to(device).float() / 255])[0]
        keep = found["scores"] >= score
        found = {k: v[keep].cpu() for k, v in found.items()}
        labels = found["labels"].tolist()
        for result, label in zip(coco_results(found, index, category_ids), labels, strict=True):
            results.append({"file": str(path), **result, "label": _name(names, label)})
        if drawings is not None:
            from torchvision.io import encode_png

            with atomic_path(drawings[index]) as tmp:
                tmp.write_bytes(encode_png(draw_detections(image, found, names)).numpy().tobytes())
            written.append(drawings[index])
    if json_file is not None:
        written.append(atomic_write_text(Path(json_file), json.dumps(results, indent=1) + "\n"))
    return {"results": results, "written": written}


def _drawing_paths(files: list[Path], out: str | Path | None) -> list[Path]:
    """Where each image's drawing goes: ``out`` itself for one image, ``out/NAME.png`` for several."""
    if len(files) == 1:
        return [Path(out or "boxes.png")]
    folder = Path(out or "boxes")
    if folder.suffix.lower() == ".png":
        raise ValueError(f"out={str(folder)!r} names one PNG but {len(files)} images were given; give a folder")
    stems = [p.stem for p in files]
    # Images of the same name in different folders keep apart by their index.
    return [folder / (f"{s}.png" if stems.count(s) == 1 else f"{s}-{i}.png") for i, s in enumerate(stems)]
