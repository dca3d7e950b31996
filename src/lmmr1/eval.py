"""Evaluation: generate from a model and score with the same rule rewards training uses.

Accuracy is the ``accuracy`` reward alone (never mixed with the format bonus); with n samples it
is the mean over samples (mean@n) and pass@k uses the unbiased estimator of Chen et al. 2021:
pass@k = 1 - C(n-c, k) / C(n, k) averaged over problems, c = correct samples of the problem.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmmr1.data.dataset import PromptDataset
from lmmr1.models.loader import LoadedModel
from lmmr1.rewards import CompositeReward, Sample
from lmmr1.rollout import SamplingParams, sample


@dataclass
class EvalConfig:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 16  # prompts per generation batch
    seed: int = 0
    samples_per_suite: int = 3  # completions kept in the results for reading


def pass_at_k(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate_suite(lm: LoadedModel, ds: PromptDataset, cfg: EvalConfig, reward: CompositeReward) -> dict[str, Any]:
    t0 = time.perf_counter()
    correct_per_problem: list[int] = []
    acc, fmt, lengths, sources = [], [], [], {}
    kept = []
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
        f = [0.0 if v is None else float(v) for v in res.components.get("format", [0.0] * ro.num_rows)]
        acc += a
        fmt += f
        lengths += ro.lengths.tolist()
        for i, e in enumerate(exs):
            c = sum(1 for k in range(cfg.n) if a[i * cfg.n + k] >= 1.0)
            correct_per_problem.append(c)
            src = sources.setdefault(e.datasource, [])
            src.extend(a[i * cfg.n : (i + 1) * cfg.n])
        for r in range(min(ro.num_rows, max(0, cfg.samples_per_suite - len(kept)))):
            kept.append({"source": exs[r // cfg.n].source, "prompt": samples[r].prompt, "completion": ro.texts[r],
                         "answer": exs[r // cfg.n].answer, "accuracy": a[r], "format": f[r]})
    out = {
        "problems": len(ds), "samples": len(acc),
        "accuracy": sum(acc) / len(acc), "format_rate": sum(fmt) / len(fmt),
        "mean_length": sum(lengths) / len(lengths),
        f"pass@{cfg.n}": sum(pass_at_k(cfg.n, c, cfg.n) for c in correct_per_problem) / len(correct_per_problem),
        "pass@1": sum(pass_at_k(cfg.n, c, 1) for c in correct_per_problem) / len(correct_per_problem),
        "by_datasource": {k: sum(v) / len(v) for k, v in sorted(sources.items())},
        "seconds": round(time.perf_counter() - t0, 2),
        "examples": kept,
    }
    return out


def evaluate(lm: LoadedModel, suites: dict[str, PromptDataset], cfg: EvalConfig | None = None,
             reward: CompositeReward | None = None) -> dict[str, dict[str, Any]]:
    cfg = cfg or EvalConfig()
    own = reward is None
    reward = reward or CompositeReward(["accuracy", "format"])
    try:
        with torch.no_grad():
            return {name: evaluate_suite(lm, ds, cfg, reward) for name, ds in suites.items()}
    finally:
        if own:
            reward.close()


def write_results(results: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(results, indent=2, ensure_ascii=False))
