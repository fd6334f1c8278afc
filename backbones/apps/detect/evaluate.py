"""COCO's detection metric through pycocotools: predictions, gathered over processes, scored once.

The twelve figures are ``COCOeval.stats`` in its order: AP (IoU .50:.95), AP50, AP75, AP for
small / medium / large objects, AR with 1, 10 and 100 detections per image, AR small / medium /
large. COCO writes -1 for an area range without ground truth; here that is ``None`` (JSON null).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from backbones.apps.detect.config import COCO_METRICS, DIGIT_SCENES
from backbones.apps.parallel import DistributedContext, distributed_session
from backbones.data.loaders import make_loader

__all__ = [
    "COCO_METRICS",
    "coco_results",
    "detect_evaluate",
    "evaluate_split",
    "gather_results",
    "predict_dataset",
    "score_results",
]


def coco_results(
    detections: dict[str, torch.Tensor], image_id: int, label_to_category_id: dict[int, int]
) -> list[dict[str, Any]]:
    """One image's detections as COCO results: the dataset's category ids, boxes as ``[x, y, w, h]``.

    Args:
        detections: The detector's output for one image (``boxes`` xyxy, ``labels``, ``scores``).
        image_id: The image's id in the annotations file.
        label_to_category_id: The detector's labels (1..K) to the file's category ids.
    """
    boxes = detections["boxes"].detach().float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    labels, scores = detections["labels"].tolist(), detections["scores"].detach().float().cpu().tolist()
    return [
        {"image_id": int(image_id), "category_id": int(label_to_category_id[int(label)]), "bbox": box, "score": score}
        for box, label, score in zip(xywh, labels, scores, strict=True)
    ]


@torch.no_grad()
def predict_dataset(
    model: nn.Module, loader: Any, label_to_category_id: dict[int, int], context: DistributedContext, *, dtype: str
) -> list[dict[str, Any]]:
    """This process's share of the COCO results: the model (put in eval mode here) on every batch of ``loader``."""
    model.eval()
    results: list[dict[str, Any]] = []
    autocast = (
        torch.autocast(device_type=context.device.type, dtype=torch.bfloat16)
        if dtype == "bf16"
        else contextlib.nullcontext()
    )
    for images, targets in loader:
        with autocast:
            outputs = model([image.to(context.device) for image in images])
        for output, target in zip(outputs, targets, strict=True):
            results += coco_results(output, int(target["image_id"]), label_to_category_id)
    return results


def gather_results(results: list[dict[str, Any]], context: DistributedContext) -> list[dict[str, Any]] | None:
    """Every process's results on rank 0 (``None`` on the others); alone, ``results`` as they are."""
    if not context.distributed:
        return results
    import torch.distributed as dist

    parts: list[Any] = [None] * context.world_size
    dist.all_gather_object(parts, results)
    return [r for part in parts for r in part] if context.is_main else None


def _area_ranges(truth: Any) -> list[list[float]] | None:
    """COCO's area ranges (all, small, medium, large) from the file's ``info.area_thresholds``, if it has them.

    The digit scenes record COCO's 32^2 / 96^2 scaled to their canvas there; other files get COCO's own.
    """
    info = truth.dataset.get("info")
    thresholds = info.get("area_thresholds") if isinstance(info, dict) else None
    if not (isinstance(thresholds, list) and len(thresholds) == 2):
        return None
    small, large = (float(t) for t in thresholds)
    return [[0.0, 1e10], [0.0, small], [small, large], [large, 1e10]]


def score_results(annotations: str | Path, results: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """COCO's bounding-box metrics of ``results`` against the ground truth of ``annotations``.

    Small, medium and large are COCO's areas (below 32^2, above 96^2), or those the file's
    ``info.area_thresholds`` gives (the digit scenes scale COCO's to their canvas).

    Args:
        annotations: The instances JSON.
        results: COCO results (``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]``, ``score``).

    Returns:
        :data:`COCO_METRICS` by name, in 0..1 (``None`` where the ground truth has no object of
        that size). No results at all score 0.

    Raises:
        ImportError: pycocotools is not installed.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError(
            "the COCO metric needs pycocotools; install it with `pip install backbones[detect]`"
        ) from None
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        truth = COCO(str(annotations))
        ranges = _area_ranges(truth)
        if not results:
            # loadRes cannot take an empty list: nothing detected is 0, a size without objects None.
            ranges = ranges or [[0.0, 1e10], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e10]]
            zero: dict[str, float | None] = dict.fromkeys(COCO_METRICS, 0.0)
            areas = [a["area"] for a in truth.dataset["annotations"] if not a.get("iscrowd")]
            for suffix, (low, high) in zip(("s", "m", "l"), ranges[1:], strict=True):
                if not any(low <= area <= high for area in areas):
                    zero[f"AP_{suffix}"] = zero[f"AR_{suffix}"] = None
            return zero
        evaluation = COCOeval(truth, truth.loadRes(list(results)), iouType="bbox")
        if ranges is not None:
            evaluation.params.areaRng = ranges
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {
        name: (None if value < 0 else float(value)) for name, value in zip(COCO_METRICS, evaluation.stats, strict=True)
    }


def evaluate_split(
    model: nn.Module,
    dataset: Any,
    context: DistributedContext,
    *,
    batch_size: int,
    label_to_category_id: dict[int, int],
    dtype: str = "fp32",
    workers: int = 0,
) -> dict[str, Any]:
    """COCO's metrics of ``model`` on ``dataset``: each process predicts its share, rank 0 scores, all return it."""
    from backbones.data.coco import collate_detection

    loader = make_loader(dataset, batch_size, training=False, workers=workers, collate_fn=collate_detection)
    gathered = gather_results(predict_dataset(model, loader, label_to_category_id, context, dtype=dtype), context)
    metrics = [score_results(dataset.annotations_path, gathered) if gathered is not None else None]
    if context.distributed:
        import torch.distributed as dist

        dist.broadcast_object_list(metrics, src=0)
    return dict(metrics[0])  # type: ignore[arg-type]


def detect_evaluate(
    folder: str | Path,
    data: str,
    *,
    split: str = "val",
    batch_size: int = 4,
    dtype: str = "fp32",
    canvas: int | None = None,
    train_scenes: int | None = None,
    val_scenes: int | None = None,
    invalid_boxes: str = "refuse",
    workers: int = 0,
    device: str | None = None,
    timeout: float | None = None,
    record: bool = True,
) -> dict[str, Any]:
    """COCO's metrics of a saved detector on a split, recorded in its ``metrics.jsonl`` and model card.

    Runs alone or under torchrun (each process predicts its share; rank 0 scores and writes).

    Args:
        folder: A detector folder (``detect train``'s output, or any :func:`save_detector` folder).
        data: ``"digit-scenes"`` or a COCO folder (``train/``, ``val/``) or one split's folder.
        split: ``"val"`` or ``"train"``.
        batch_size: Images per batch per process.
        dtype: ``"fp32"`` or ``"bf16"`` (autocast).
        canvas: Digit scenes: the canvas (default: the one the detector was trained on).
        train_scenes: Digit scenes: training scenes (default: as trained).
        val_scenes: Digit scenes: validation scenes (default: as trained).
        invalid_boxes: ``"refuse"`` or ``"drop"`` a box outside its image or without area.
        workers: DataLoader workers per process.
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA when available).
        timeout: Under torchrun: seconds a process waits for the others.
        record: Append the figures to ``metrics.jsonl`` and the model card.

    Returns:
        :data:`COCO_METRICS` by name (0..1, ``None`` for a size with no object), and ``images``.

    Raises:
        ValueError: The data's categories are not the detector's (the message names both).
    """
    from backbones.apps.detect.data import open_split, scene_options, split_folder
    from backbones.apps.detect.output import read_detection_config, record_evaluation
    from backbones.core.vocabulary import dtype_name
    from backbones.models.detection import detector

    folder = Path(folder).expanduser()
    dtype = dtype_name(dtype, allowed=("fp32", "bf16"), what="dtype")
    with distributed_session(device=device, timeout=timeout) as context:
        model = detector(folder).to(context.device)
        saved = read_detection_config(folder)
        trained = saved.get("detection") or {}
        sizes = {}
        if data == DIGIT_SCENES:
            recorded = trained.get("scene_sizes") or {}
            given = {"canvas": canvas, "train_scenes": train_scenes, "val_scenes": val_scenes}
            sizes = scene_options(**{k: recorded.get(k) if v is None else v for k, v in given.items()})
        dataset = open_split(
            split_folder(data, split, sizes=sizes, context=context), augment=False, invalid_boxes=invalid_boxes
        )
        mapping = _category_ids(folder, model.detector_config, trained, dataset)
        metrics = evaluate_split(
            model, dataset, context, batch_size=batch_size, label_to_category_id=mapping, dtype=dtype, workers=workers
        )
        metrics["images"] = len(dataset)
        if record and context.is_main:
            where = f"{data} {split} split ({len(dataset)} images)"
            record_evaluation(
                folder, {"evaluated": where, "data": data, "split": split, **metrics, "processes": context.world_size}
            )
        if context.distributed:
            import torch.distributed as dist

            dist.barrier()  # the folder is written before any process returns
        return metrics


def _category_ids(folder: Path, config: dict[str, Any], trained: dict[str, Any], dataset: Any) -> dict[int, int]:
    """The detector's labels to the dataset's category ids, refusing data with other categories."""
    names = config.get("class_names")
    if names is not None and list(names) != list(dataset.class_names):
        raise ValueError(
            f"{dataset.annotations_path} has the categories {list(dataset.class_names)[1:6]}..., the detector "
            f"{folder} was trained on {list(names)[1:6]}...; evaluate it on data with its own categories"
        )
    if config["num_classes"] != dataset.num_classes:
        raise ValueError(
            f"{dataset.annotations_path} has {dataset.num_classes - 1} categories, the detector {folder} "
            f"{config['num_classes'] - 1}; evaluate it on data with its own categories"
        )
    recorded = trained.get("category_ids")
    if recorded:
        return {int(k): int(v) for k, v in recorded.items()}
    return {int(k): int(v) for k, v in dataset.label_to_category_id.items()}
