"""Agent environments (Sokoban, Football) behind one protocol: see :mod:`lmmr1.envs.base`."""

from lmmr1.envs.base import ENVS, Env, EnvError, Observation, StepResult, make_env

__all__ = ["ENVS", "Env", "EnvError", "Observation", "StepResult", "make_env"]
