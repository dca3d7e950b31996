"""Metrics to metrics.jsonl (+ TensorBoard, + W&B when installed and asked for), samples to
samples.jsonl, a readable one-line summary per step on the console, and ``train.log``: a plain
copy of everything the trainer's console prints (no colours, no progress-bar redraws), so a run
can be read after the fact, e.g. on a cluster where the terminal is gone."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console, NewLine
from rich.control import Control

from lmmr1.errors import LmmR1Error
from lmmr1.trainer.rundir import truncate_jsonl

WANDB_MISSING = ("train.wandb=true but wandb is not installed: pip install 'lmmr1[wandb]' "
                 "(or set train.wandb=false)")

RL_LEGEND = ("step lines: reward = mean total reward, acc = mean accuracy reward, len = mean completion tokens, "
             "kl = mean per-token KL to the reference policy, ent = mean per-token entropy, clip = fraction of "
             "tokens whose ratio was clipped, gap = max |rollout - training log-prob| before the update "
             "(should be ~0), then seconds per step")
SFT_LEGEND = ("step lines: sft loss = mean negative log-likelihood per response token, |g| = gradient norm "
              "before clipping, lr = learning rate, then seconds per step")


class TeeConsole(Console):
    """The console the trainer prints to, plus a plain-text copy of each message in ``log_path``.

    Only messages are copied (``print``/``rule``), not the progress bar's redraws (``Control``
    objects and ``control()`` calls), and the copy is never wrapped, so one step line is one line.
    Off a terminal (output redirected to a file) the console itself does not wrap either.
    """

    def __init__(self, base: Console, log_path: Path):
        base = base.base if isinstance(base, TeeConsole) else base
        where = {"stderr": True} if base.file is sys.stderr else {"file": base.file}
        super().__init__(force_terminal=base.is_terminal, color_system=base.color_system, no_color=base.no_color,
                         quiet=base.quiet, soft_wrap=not base.is_terminal, **where)
        self.base = base
        self.log_path = Path(log_path)
        self.log_file = self.log_path.open("a", encoding="utf-8", buffering=1)
        self.plain = Console(file=self.log_file, width=160, color_system=None, no_color=True, force_terminal=False,
                             highlight=False, soft_wrap=True, emoji=False)

    def print(self, *objects: Any, **kwargs: Any) -> None:  # noqa: A003 (rich's name)
        super().print(*objects, **kwargs)
        # not copied: redraws (Control), and the bare newline Progress prints when it stops off a terminal
        if self.log_file.closed or not objects or all(isinstance(o, (Control, NewLine)) for o in objects):
            return
        keep = {k: v for k, v in kwargs.items() if k in ("sep", "end", "markup", "justify")}
        self.plain.print(*objects, **keep, soft_wrap=True)

    def log_only(self, text: str) -> None:
        """A line for train.log only (e.g. the error the command line prints after the trainer returns)."""
        if not self.log_file.closed:
            self.plain.print(text, markup=False, soft_wrap=True)

    def close(self) -> None:
        if not self.log_file.closed:
            self.log_file.close()


class MetricsLogger:
    def __init__(self, output_dir: Path, *, tensorboard: bool = True, wandb: bool = False,
                 wandb_project: str = "lmmr1", wandb_run_name: str | None = None, wandb_entity: str | None = None,
                 config: dict | None = None, console: Console | None = None, start_step: int = 0):
        """``start_step``: the step training continues from (0 for a new run).  Rows of later steps
        (written before a kill and about to be replayed) are removed first, so each step has one row."""
        self.dir = output_dir
        self.console = console or Console(stderr=True)
        self.removed_rows = truncate_jsonl(output_dir / "metrics.jsonl", start_step)
        truncate_jsonl(output_dir / "samples.jsonl", start_step)
        self.metrics = (output_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.samples = (output_dir / "samples.jsonl").open("a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard hides events of replayed steps written before the kill
                self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step + 1)
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
