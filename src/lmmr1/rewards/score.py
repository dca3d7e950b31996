"""``lmmr1 score``: score a JSONL of completions offline with the same rewards training uses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lmmr1.errors import LmmR1Error
from lmmr1.rewards.base import Sample, prompt_parts
from lmmr1.rewards.compose import CompositeReward

_RESERVED = ("completion", "answer", "prompt", "completion_tokens")


@dataclass
class ScoreSummary:
    rows: int = 0
    error_rows: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    def mean(self, key: str) -> float | None:
        return self.sums[key] / self.counts[key] if self.counts.get(key) else None


def _add(summary: ScoreSummary, key: str, value: float | None) -> None:
    if value is not None:
        summary.sums[key] = summary.sums.get(key, 0.0) + value
        summary.counts[key] = summary.counts.get(key, 0) + 1


def successes(reward: CompositeReward, samples: list[Sample]) -> list[bool] | None:
    """Per sample, whether every env reward of ``reward`` (those with ``success_of``, e.g. sokoban)
    says its replay solved the task; None when ``reward`` has no env reward.  A row an env reward
    cannot score is not a success."""
    parts = [r for _, _, r in reward.parts if hasattr(r, "success_of")]
    if not parts:
        return None
    flags = [True] * len(samples)
    for r in parts:
        for i, ok in enumerate(r.success_of(samples)):
            flags[i] = flags[i] and bool(ok)
    return flags


def score_file(input_path: str | Path, reward: CompositeReward, out: IO[str], batch_size: int = 256) -> ScoreSummary:
    """Write one output line per input line (input fields kept + rewards/reward or error)."""
    path = Path(input_path)
    try:
        fh = path.open(encoding="utf-8")
    except OSError as e:
        raise LmmR1Error(f"cannot read {path}: {e.strerror or e}") from e
    summary = ScoreSummary()
    batch: list[tuple[int, dict, Sample | None, str | None]] = []

    def flush() -> None:
        good = [(k, s) for k, (_, _, s, err) in enumerate(batch) if err is None]
        result = reward([s for _, s in good]) if good else None
        success = successes(reward, [s for _, s in good]) if good else None
        slot = {k: j for j, (k, _) in enumerate(good)}
        for k, (lineno, row, _, err) in enumerate(batch):
            summary.rows += 1
            if err is None and result is not None:
                j = slot[k]
                if result.errors[j] is not None:
                    err = f"{path}:{lineno}: {result.errors[j]}"
                else:
                    comps = {name: vals[j] for name, vals in result.components.items()}
                    row = {**row, "rewards": comps, "reward": result.total[j]}
                    if success is not None:  # env rewards: did the replay solve the task
                        row["success"] = bool(success[j])
                        _add(summary, "success", float(success[j]))
                    for name, v in comps.items():
                        _add(summary, name, v)
                    _add(summary, "reward", result.total[j])
            if err is not None:
                summary.error_rows += 1
                row = {**row, "error": err}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        batch.clear()

    with fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                batch.append((lineno, {"line": lineno}, None, f"{where}: invalid JSON ({e.msg})"))
            else:
                if not isinstance(row, dict):
                    batch.append((lineno, {"line": lineno}, None, f"{where}: a line must be a JSON object"))
                elif not isinstance(row.get("completion"), str):
                    batch.append((lineno, row, None, f"{where}: field 'completion' is missing or not a string"))
                else:
                    fields = {k: v for k, v in row.items() if k not in _RESERVED}
                    prompt, messages = prompt_parts(row.get("prompt") or "")  # text, or chat messages
                    sample = Sample(completion=row["completion"], answer=row.get("answer"), prompt=prompt,
                                    fields=fields, completion_tokens=row.get("completion_tokens"),
                                    messages=messages, source=where)
                    batch.append((lineno, row, sample, None))
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    summary.stats = reward.stats()
    return summary
