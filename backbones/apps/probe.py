"""How good are extracted embeddings? A k-NN (cosine) and a logistic-regression probe on a train/val split.

``backbones probe DIR`` reads what ``backbones extract`` wrote, splits the images with the data
layer's seeded stratified split (for the digits extracted with ``--split all`` this is the very
split ``finetune`` trains and validates on, so the probe's top-1 sits beside the model's own),
and reports the top-1 of

* a k-nearest-neighbour classifier: cosine similarity to the training embeddings, each of the
  ``k`` nearest voting for its class with its similarity;
* a logistic-regression probe (scikit-learn, ``pip install backbones[data]``) on standardised
  embeddings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from backbones.apps.extract.layers import POOLED
from backbones.apps.extract.store import load_features, read_manifest
from backbones.data.splits import stratified_split

__all__ = ["ProbeResult", "knn_top1", "logistic_top1", "probe"]

# Rows of the validation set compared with the training set at once (bounds the similarity matrix).
_KNN_CHUNK = 1024


@dataclass(frozen=True)
class ProbeResult:
    """Top-1 accuracies (fractions in [0, 1]) of both probes, and what they were measured on."""

    layer: str
    knn_top1: float
    k: int
    logistic_top1: float | None
    train_images: int
    val_images: int
    classes: int

    def as_dict(self) -> dict[str, Any]:
        """The result as a plain dict (for JSON)."""
        return asdict(self)


def knn_top1(train: Tensor, train_labels: Tensor, val: Tensor, val_labels: Tensor, k: int = 20) -> float:
    """Top-1 of a cosine k-NN classifier: the ``k`` most similar training rows vote, weighted by similarity.

    Args:
        train: Training embeddings ``[N, D]``.
        train_labels: Their classes ``[N]``.
        val: Validation embeddings ``[M, D]``.
        val_labels: Their classes ``[M]``.
        k: Neighbours per vote (capped at ``N``).

    Returns:
        The fraction of validation rows whose vote is their class.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, train.shape[0])
    train = F.normalize(train.float(), dim=1)
    classes = int(max(train_labels.max(), val_labels.max())) + 1
    correct = 0
    for start in range(0, val.shape[0], _KNN_CHUNK):
        chunk = F.normalize(val[start : start + _KNN_CHUNK].float(), dim=1)
        similarity, neighbour = (chunk @ train.T).topk(k, dim=1)
        votes = torch.zeros(chunk.shape[0], classes).scatter_add_(1, train_labels[neighbour], similarity)
        correct += int((votes.argmax(dim=1) == val_labels[start : start + _KNN_CHUNK]).sum())
    return correct / val.shape[0]


def logistic_top1(
    train: Tensor, train_labels: Tensor, val: Tensor, val_labels: Tensor, *, max_iter: int = 1000
) -> float:
    """Top-1 of a logistic-regression probe (scikit-learn, L2, lbfgs) on standardised embeddings.

    Raises:
        ImportError: scikit-learn is not installed.
    """
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ImportError(
            "the logistic-regression probe needs scikit-learn; install it with `pip install backbones[data]`"
        ) from None
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    classifier.fit(train.float().numpy(), train_labels.numpy())
    return float(classifier.score(val.float().numpy(), val_labels.numpy()))


def probe(
    features_dir: str | Path,
    *,
    layer: str | None = None,
    k: int = 20,
    val_fraction: float = 0.2,
    seed: int = 0,
    logistic: bool = True,
) -> ProbeResult:
    """Measure extracted embeddings with a k-NN and a logistic-regression probe.

    Args:
        features_dir: A folder written by ``backbones extract``.
        layer: The stored layer to probe (default ``pooled`` when stored, else the first one);
            feature maps are flattened.
        k: Neighbours of the k-NN vote.
        val_fraction: Share of the images held out (seeded, stratified: the data layer's split).
        seed: Seed of the split.
        logistic: Also fit the logistic-regression probe (needs scikit-learn).

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: Unlabelled images, fewer than two classes, or an unknown layer.

    Example:
        >>> backbones.extract("my-finetuned-resnet18", "digits", "digits-features/")
        >>> probe("digits-features/").knn_top1
    """
    layers = read_manifest(features_dir)["layers"]
    layer = layer or (POOLED if POOLED in layers else layers[0])
    result = load_features(features_dir, layers=[layer])
    labels = result.labels
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(
            f"{features_dir} holds unlabelled images (label -1); probing needs one subfolder per class in DATA"
        )
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"{features_dir} holds fewer than two classes; probing needs at least two")
    embeddings = result.features[layer].flatten(1)
    train, val = stratified_split(labels.tolist(), val_fraction, seed)
    train_x, train_y, val_x, val_y = embeddings[train], labels[train], embeddings[val], labels[val]
    return ProbeResult(
        layer=layer,
        knn_top1=knn_top1(train_x, train_y, val_x, val_y, k),
        k=min(k, len(train)),
        logistic_top1=logistic_top1(train_x, train_y, val_x, val_y) if logistic else None,
        train_images=len(train),
        val_images=len(val),
        classes=len(set(labels.tolist())),
    )
