"""The run directory: checked before any model loads, and never silently mixed with another run.

* :func:`prepare_output_dir` — output_dir exists (or is created) and is a writable directory;
  a file, or a path under a file, is a one-line error instead of a traceback after loading.
* :func:`recipe_changes` — which settings differ between the recipe a run directory was made
  with (its ``config.yaml``) and the one asked for now.  Pipelines use it for finished stages,
  single-stage runs before resuming: resuming another recipe's run would mix the metrics of two
  runs and overwrite ``config.yaml``.
* :func:`claim` — what ``train.resume`` means for a run directory that already holds a run.
* :func:`truncate_jsonl` — after a resume, rows of the steps that will be replayed are dropped,
  so ``metrics.jsonl`` / ``samples.jsonl`` hold exactly one row per step.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from lmmr1.errors import LmmR1Error

# Settings that do not change what a run computes: they may differ between invocations of one run.
# A trailing * matches any key with that prefix (train.wandb*: wandb, wandb_project, wandb_entity, ...).
NOT_RESULTS = ("output_dir", "train.resume", "train.num_threads", "train.tensorboard", "train.wandb*",
               "train.save_every", "train.keep_checkpoints", "train.log_samples", "model.device", "distributed*",
               "rollout.max_rows_in_flight", "rollout.max_tokens_in_flight")
# What a run leaves in its output_dir (train.resume=overwrite deletes exactly these).
RUN_FILES = ("config.yaml", "metrics.jsonl", "samples.jsonl", "train.log", "tensorboard", "checkpoints", "final",
             "base_model")


def prepare_output_dir(path: Path) -> Path:
    """Create ``path`` if needed and check that files can be written into it."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise LmmR1Error(f"output_dir {path} is a file; pass a directory (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".lmmr1_write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise LmmR1Error(f"output_dir {path} cannot be created or written into ({e.strerror or e}); pick a directory you can "
                         "write to") from None
    return path


def check_output_dir(path: Path) -> Path:
    """Like :func:`prepare_output_dir` but creates and writes nothing (for ``--dry-run``): the
    directory, or its nearest existing parent, must be a directory this process may write into."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise LmmR1Error(f"output_dir {path} is a file; pass a directory (it is created if missing)")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        why = "Not a directory" if not probe.is_dir() else "Permission denied"
        raise LmmR1Error(f"output_dir {path} cannot be created or written into ({why}); pick a directory you can "
                         "write to")
    return path


def _leaves(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        out = {f"{prefix}.#": len(d)}
        for i, x in enumerate(d):
            out.update(_leaves(x, f"{prefix}.{i}"))
        return out
    return {prefix: list(d) if isinstance(d, tuple) else d}


def _normalise(d: dict) -> dict:
    d = copy.deepcopy(d)
    for ds in d.get("data") or []:
        if isinstance(ds, dict) and isinstance(ds.get("path"), str):
            ds["path"] = str(Path(ds["path"]).expanduser().resolve())
    model = d.get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str) and model["path"]:
        model["path"] = str(Path(model["path"]).expanduser().resolve())
    return d


def recipe_changes(old: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ (``optim.lr``, ``data.0.path``, ``data`` for a different
    number of sources), ignoring :data:`NOT_RESULTS` and ``ignore``.  A key present on one side
    only (a setting added or removed in another lmmr1 version) is not a change."""
    skip = NOT_RESULTS + tuple(ignore)
    a, b = _leaves(_normalise(old)), _leaves(_normalise(new))
    changed = []
    for k in sorted(set(a) & set(b)):
        if any(k.startswith(s[:-1]) if s.endswith("*") else (k == s or k.startswith(s + ".")) for s in skip) \
                or a[k] == b[k]:
            continue
        changed.append(k[: -len(".#")] if k.endswith(".#") else k)
    if any(k.endswith(".#") and a.get(k) != b.get(k) for k in set(a) & set(b)):  # lists of another length
        lists = {k[: -len(".#")] for k in set(a) & set(b) if k.endswith(".#") and a[k] != b[k]}
        changed = [c for c in changed if not any(c.startswith(p + ".") for p in lists)]
    return sorted(set(changed))


def describe_changes(changed: list[str], limit: int = 6) -> str:
    return ", ".join(changed[:limit]) + (f" and {len(changed) - limit} more" if len(changed) > limit else "")


def holds_run(out: Path) -> bool:
    return any((out / f).exists() for f in ("config.yaml", "metrics.jsonl", "checkpoints"))


def last_logged_step(out: Path) -> int:
    step = 0
    f = out / "metrics.jsonl"
    if f.exists():
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                step = max(step, int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue
    return step


def claim(out: Path, new_config: dict, resume: Any, dry_run: bool = False) -> None:
    """Decide, before any model loads, whether this invocation may use ``out``.

    * ``resume: auto`` / a checkpoint path: an earlier run in ``out`` is continued only if it was
      made by the same recipe (settings that do not change results may differ, and ``train.steps``
      may grow or shrink); otherwise one line names the changed settings.
    * ``resume: none``: start from step 0, but only in a directory that holds no run: mixing two
      runs' metrics (or overwriting one) is never done silently.
    * ``resume: overwrite``: delete the earlier run's files (:data:`RUN_FILES`) and start over
      (``dry_run``: only check, delete nothing).
    """
    mode = str(resume).lower() if resume not in (None, False) else "none"
    if mode == "overwrite":
        if dry_run:
            return
        for name in RUN_FILES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        return
    if not holds_run(out):
        return
    if mode in ("none", "", "false"):
        raise LmmR1Error(
            f"output_dir {out} already holds a run (logged up to step {last_logged_step(out)}) and train.resume=none "
            "would mix or overwrite it; use a new output_dir, train.resume=auto to continue it, or "
            "train.resume=overwrite to delete it and start over")
    saved = out / "config.yaml"
    if not saved.exists():
        return
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise LmmR1Error(f"{saved} is not valid YAML ({str(e).splitlines()[0]}); use a new output_dir, or "
                         "train.resume=overwrite to delete that run and start over") from None
    if not isinstance(old, dict):
        return
    # train.steps may change: resuming with more steps extends a run (the lr schedule follows the new length)
    changed = recipe_changes(old, new_config, ignore=("train.steps",))
    if changed:
        raise LmmR1Error(
            f"output_dir {out} holds a run of a different recipe (changed: {describe_changes(changed)}); use a new "
            "output_dir, or train.resume=overwrite to delete that run and start over")


def truncate_jsonl(path: Path, max_step: int) -> int:
    """Keep the rows with ``step <= max_step`` (and drop a half-written last line); returns rows removed."""
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    keep = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) <= max_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
        os.replace(tmp, path)
    return len(lines) - len(keep)


def resume_command() -> str:
    """The command that resumes this run: the invoking ``lmmr1 train`` command line with
    ``train.resume=auto`` (the newest complete checkpoint; in a pipeline, the interrupted stage's),
    or a description when lmmr1 was not run from its command line."""
    argv = list(sys.argv)
    prog = Path(argv[0]).name if argv else ""
    if len(argv) >= 2 and argv[1] == "train" and prog in ("lmmr1", "cli.py", "__main__.py"):
        args = [a for a in argv[2:] if not a.startswith("train.resume=")]
        return "lmmr1 train " + shlex.join(args + ["train.resume=auto"])
    return "run the same recipe again with train.resume=auto (the default)"
