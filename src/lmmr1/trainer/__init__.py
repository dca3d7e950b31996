"""The RL trainer: config, the step, checkpoints/resume, metrics."""

from lmmr1.trainer.config import Config, load_config
from lmmr1.trainer.trainer import Trainer, train

__all__ = ["Config", "Trainer", "load_config", "train"]
