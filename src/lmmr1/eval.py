"""Evaluation: generate from a model and score with the same rule rewards training uses.

Accuracy is the ``accuracy`` reward alone (never mixed with the format bonus); with n samples it
is the mean over samples (mean@n) and pass@k uses the unbiased estimator of Chen et al. 2021:
pass@k = 1 - C(n-c, k) / C(n, k) averaged over problems, c = correct samples of the problem.

Env suites (every row has an ``env`` field, e.g. ``lmmr1 data synth sokoban``): each answer is
replayed in its env, LMM-R1's single-turn way; ``accuracy`` (= ``success_rate``) is the fraction
of replays that solve the task and ``mean_return`` the mean episode return of the replays.

``truncated`` is the fraction of samples that hit ``max_new_tokens`` before ending: a cut-off
answer usually scores 0, so a high value means the length budget, not the model, set the score.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmmr1.data.dataset import PromptDataset
from lmmr1.errors import LmmR1Error
from lmmr1.models.loader import LoadedModel
from lmmr1.models.precision import Precision
from lmmr1.rewards import CompositeReward, Sample
from lmmr1.rollout import SamplingParams, sample

# A reasoning model's "<think> ... </think> answer" often runs past 1,000 tokens; a smaller
# default cuts answers off and reports the length budget as the model's accuracy.
DEFAULT_MAX_NEW_TOKENS = 2048
TRUNCATION_WARN_FRACTION = 0.1

# Called after each generation batch: (suite name, problems done, problems in the suite).
ProgressFn = Callable[[str, int, int], None]


@dataclass
class EvalConfig:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = 16  # prompts per generation batch
    seed: int = 0
    samples_per_suite: int = 3  # completions kept in the results for reading
    episode: dict[str, Any] = field(default_factory=dict)  # env suites played turn by turn: EpisodeConfig keys

    def check(self) -> list[str]:
        """Raise for values that cannot run; return warnings for values that run but mislead."""
        if self.n < 1:
            raise LmmR1Error(f"eval n={self.n}: samples per problem must be >= 1")
        if self.batch_size < 1:
            raise LmmR1Error(f"eval batch_size={self.batch_size}: must be >= 1")
        if self.max_new_tokens < 1:
            raise LmmR1Error(f"eval max_new_tokens={self.max_new_tokens}: must be >= 1")
        if self.temperature < 0:
            raise LmmR1Error(f"eval temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise LmmR1Error(f"eval top_p={self.top_p}: must be in (0, 1]")
        warnings = []
        if self.n > 1 and self.temperature == 0:
            warnings.append(f"{self.n} samples per problem (--n) at temperature 0: greedy samples are identical, so pass@{self.n} equals "
                            "pass@1 and the extra samples only cost time; set a temperature > 0 (e.g. 1.0)")
        return warnings


def pass_at_k(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate_suite(lm: LoadedModel, ds: PromptDataset, cfg: EvalConfig, reward: CompositeReward,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Scores of one suite; ``progress(done, total)`` is called after each batch of prompts."""
    t0 = time.perf_counter()
    correct_per_problem: list[int] = []
    acc, fmt, lengths, sources = [], [], [], {}
    truncated = 0
    kept = []
    env_suite = bool(ds.examples) and all(isinstance(e.fields.get("env"), dict) for e in ds.examples)
    if env_suite and cfg.episode.get("turns"):  # multi-turn: play each row's episode (rollout/episodes.py)
        return _episodes(lm, ds, cfg, t0)
    returns: list[float] = []
    for start in range(0, len(ds), cfg.batch_size):
        exs = ds.examples[start : start + cfg.batch_size]
        prompts = lm.processor([e.messages for e in exs], images=[e.images(ds.cfg.max_pixels) for e in exs],
                               row_names=[e.source for e in exs])
        ro = sample(lm, prompts, SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                                                max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + start))
        samples = [Sample(ro.texts[r], exs[r // cfg.n].answer, exs[r // cfg.n].prompt_text(),
                          {**exs[r // cfg.n].fields, "datasource": exs[r // cfg.n].datasource},
                          int(ro.lengths[r])) for r in range(ro.num_rows)]
        res = reward(samples)
        a = [0.0 if v is None else float(v) for v in res.components.get("accuracy", [0.0] * ro.num_rows)]
        if env_suite:  # agent tasks: accuracy is the success rate of replaying the answer in the env
            scores = [_env_score(smp, exs[r // cfg.n].source) for r, smp in enumerate(samples)]
            a = [1.0 if sc.success else 0.0 for sc in scores]
            returns += [sc.ret for sc in scores]
        f = [0.0 if v is None else float(v) for v in res.components.get("format", [0.0] * ro.num_rows)]
        acc += a
        fmt += f
        lengths += ro.lengths.tolist()
        truncated += sum(1 for r in ro.finish_reasons if r == "length")
        for i, e in enumerate(exs):
            c = sum(1 for k in range(cfg.n) if a[i * cfg.n + k] >= 1.0)
            correct_per_problem.append(c)
            src = sources.setdefault(e.datasource, [])
            src.extend(a[i * cfg.n : (i + 1) * cfg.n])
        for r in range(min(ro.num_rows, max(0, cfg.samples_per_suite - len(kept)))):
            kept.append({"source": exs[r // cfg.n].source, "prompt": samples[r].prompt, "completion": ro.texts[r],
                         "answer": exs[r // cfg.n].answer, "accuracy": a[r], "format": f[r],
                         "finish_reason": ro.finish_reasons[r]})
        if progress is not None:
            progress(start + len(exs), len(ds))
    out = {
        "problems": len(ds), "samples": len(acc),
        "accuracy": sum(acc) / len(acc), "format_rate": sum(fmt) / len(fmt),
        "mean_length": sum(lengths) / len(lengths),
        "truncated": truncated / len(lengths),  # fraction of samples cut at max_new_tokens
        f"pass@{cfg.n}": sum(pass_at_k(cfg.n, c, cfg.n) for c in correct_per_problem) / len(correct_per_problem),
        "pass@1": sum(pass_at_k(cfg.n, c, 1) for c in correct_per_problem) / len(correct_per_problem),
        "by_datasource": {k: sum(v) / len(v) for k, v in sorted(sources.items())},
        "seconds": round(time.perf_counter() - t0, 2),
        "examples": kept,
    }
    if env_suite:
        out["success_rate"] = out["accuracy"]
        out["mean_return"] = sum(returns) / len(returns)
    return out


def _episodes(lm: LoadedModel, ds: PromptDataset, cfg: EvalConfig, t0: float) -> dict[str, Any]:
    from lmmr1.rollout.episodes import evaluate_episodes
    from lmmr1.trainer.config import EpisodeConfig

    try:
        ep = EpisodeConfig(**cfg.episode)
    except TypeError as e:
        raise LmmR1Error(f"eval episode: {e} (keys: the episode: section of a training recipe)") from None
    out = evaluate_episodes(lm, ds.examples, [e.images(ds.cfg.max_pixels) for e in ds.examples], ep,
                            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            batch_size=cfg.batch_size, seed=cfg.seed, keep=cfg.samples_per_suite)
    out["by_datasource"] = {}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _env_score(s: Sample, where: str):
    """Replay one completion in its row's env; a broken env field is the user's to fix, named by row."""
    from lmmr1.envs.base import EnvError
    from lmmr1.rewards.agents import env_score

    try:
        return env_score(s.completion, s.fields["env"])
    except EnvError as e:
        raise LmmR1Error(f"{where}: field 'env': {e}") from None


def evaluate(lm: LoadedModel, suites: dict[str, PromptDataset], cfg: EvalConfig | None = None,
             reward: CompositeReward | None = None, progress: ProgressFn | None = None,
             precision: Precision | None = None) -> dict[str, dict[str, Any]]:
    """Scores per suite.  Invalid settings raise before any generation (see EvalConfig.check).

    ``precision``: generate as training did (the same parameter and compute dtypes, autocast
    included, ``models.precision``), so evaluation between stages measures the model that was
    trained, at the speed of the training device; default: the loaded weights' dtype, no autocast.
    Each suite's result records the device and precision it ran with."""
    precision = precision or Precision(param=lm.dtype, compute=lm.dtype, device_type=lm.device.type)
    cfg = cfg or EvalConfig()
    cfg.check()
    own = reward is None
    reward = reward or CompositeReward(["accuracy", "format"])
    try:
        with torch.no_grad(), precision.autocast():
            results = {name: evaluate_suite(lm, ds, cfg, reward,
                                            None if progress is None else _bind(progress, name))
                       for name, ds in suites.items()}
        for r in results.values():
            r["device"], r["precision"] = str(lm.device), precision.describe()
        return results
    finally:
        if own:
            reward.close()


def _bind(progress: ProgressFn, name: str) -> Callable[[int, int], None]:
    return lambda done, total: progress(name, done, total)


def write_results(results: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(results, indent=2, ensure_ascii=False))
