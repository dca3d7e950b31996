"""The README's main job.  Until the two-stage FRE -> MGT recipe lands, it runs the longest
end-to-end path that exists: recipes/smoke.yaml — build a tiny Qwen2.5-VL offline, then GRPO on
mixed text + image prompts with a rule reward — and reports whether the reward rose."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smoke.yaml"


def run(out_dir: str | Path = "runs/demo", overrides: list[str] | None = None) -> dict:
    from transformers.utils import logging as hf_logging

    from lmmr1.trainer import load_config, train

    hf_logging.disable_progress_bar()  # weight-loading bars are noise for local directories
    out = Path(out_dir)
    t0 = time.perf_counter()
    cfg = load_config(RECIPE, [f"output_dir={out}", *(overrides or [])])
    train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward/mean" in r]
    summary = {
        "recipe": str(RECIPE),
        "steps": len(rows),
        "reward_first": rows[0]["reward/mean"],
        "reward_last": rows[-1]["reward/mean"],
        "reward_by_source_last": {k.split("/")[-1]: v for k, v in rows[-1].items() if k.startswith("reward/by_source/")},
        "logprob_gap_max": max(r["logprob_gap/max"] for r in rows),
        "wall_s": round(time.perf_counter() - t0, 1),
        "final_model": str(out / "final"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nGRPO on a tiny VLM, mixed text+image prompts: reward {summary['reward_first']:.3f} -> "
          f"{summary['reward_last']:.3f} in {summary['steps']} steps ({summary['wall_s']} s)")
    print(f"max |rollout log-prob - training log-prob| = {summary['logprob_gap_max']:.1e} (fp32)")
    print(f"metrics: {out / 'metrics.jsonl'}   samples: {out / 'samples.jsonl'}   summary: {out / 'summary.json'}")
    if summary["reward_last"] <= 0.6:
        raise SystemExit("the reward did not rise above 0.6: something is wrong with this install")
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="lmmr1.demo", description=__doc__)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.steps=20")
    args = ap.parse_args(argv)
    run(args.out, args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
