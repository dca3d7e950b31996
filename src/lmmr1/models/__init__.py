"""Models: one loader for local HF checkpoints, the chat/image processor, tiny offline checkpoints."""

from lmmr1.models.loader import LoadedModel, LoraOptions, load_model
from lmmr1.models.processor import ChatProcessor, PromptBatch
from lmmr1.models.tiny import make_tiny

__all__ = ["ChatProcessor", "LoadedModel", "LoraOptions", "PromptBatch", "load_model", "make_tiny"]
