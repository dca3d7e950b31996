"""Metrics to metrics.jsonl (+ TensorBoard, + W&B when installed and asked for), samples to
samples.jsonl, and a readable one-line summary per step on the console."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console

from lmmr1.errors import LmmR1Error

WANDB_MISSING = ("train.wandb=true but wandb is not installed: pip install 'lmmr1[wandb]' "
                 "(or set train.wandb=false)")


class MetricsLogger:
    def __init__(self, output_dir: Path, *, tensorboard: bool = True, wandb: bool = False,
                 wandb_project: str = "lmmr1", wandb_run_name: str | None = None, wandb_entity: str | None = None,
                 config: dict | None = None, console: Console | None = None):
        self.dir = output_dir
        self.console = console or Console(stderr=True)
        self.metrics = (output_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.samples = (output_dir / "samples.jsonl").open("a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                self.console.print("[yellow]tensorboard is not installed; metrics go to metrics.jsonl only[/]")
        self.wandb = None
        if wandb:
            try:
                import wandb as wb
            except ImportError as e:  # asked for and missing: an error, not a run that silently logs less
                raise LmmR1Error(WANDB_MISSING) from e
            self.wandb = wb.init(project=wandb_project, name=wandb_run_name, entity=wandb_entity,
                                 config=config or {}, dir=str(output_dir))

    def log(self, metrics: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.metrics.write(json.dumps(clean) + "\n")
        self.metrics.flush()
        step = int(metrics["step"])
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(float(v)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(clean, step=step)

    def log_samples(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.samples.write(json.dumps(r, ensure_ascii=False) + "\n")
        self.samples.flush()

    def summary_line(self, m: dict[str, Any]) -> str:
        """One line per step: what a person watching the run needs."""
        if "loss/sft" in m:
            return (f"step {m['step']:>4} | sft loss {m['loss/sft']:.4f} | |g| {m['grad_norm']:.3f} | "
                    f"lr {m['lr']:.2e} | {m['time/step_s']:.2f}s")
        parts = [f"step {m['step']:>4}", f"reward {m['reward/mean']:.3f}"]
        if "accuracy/mean" in m:
            parts.append(f"acc {m['accuracy/mean']:.3f}")
        parts += [f"len {m['response_length/mean']:.0f}", f"kl {m['kl']:.3g}", f"ent {m['entropy']:.2f}",
                  f"clip {m['clip_frac']:.2f}", f"gap {m['logprob_gap/max']:.0e}", f"{m['time/step_s']:.2f}s"]
        return " | ".join(parts)

    def close(self) -> None:
        self.metrics.close()
        self.samples.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
