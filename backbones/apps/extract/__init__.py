"""Feature extraction at scale: ``extract`` (sharded, resumable, torchrun-ready) and ``load_features``."""

from backbones.apps.extract.runner import extract
from backbones.apps.extract.store import ExtractedFeatures, load_features

__all__ = ["ExtractedFeatures", "extract", "load_features"]
