"""lmmr1: rule-based RL for large multimodal models (LMM-R1: FRE on text, then MGT on images)."""

from lmmr1.errors import LmmR1Error

__version__ = "0.1.0"
__all__ = ["LmmR1Error", "__version__"]
