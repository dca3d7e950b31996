"""Side-by-side GRPO step benchmark: lmmr1 vs TRL's GRPOTrainer, same workload, one invocation.

    python benchmarks/rl_step.py                       # tiny + small, KL 0 and 0.04, table on stdout
    python benchmarks/rl_step.py --sizes tiny --steps 3

Every cell runs in its own subprocess (clean peak RSS, no shared caches): same model directory
(built with `lmmr1 make-tiny`), same prompts, n, max new tokens, rows per step and micro-batch,
one update epoch, temperature 1.0, the same reward function.  Workloads: `image` (every prompt
has an image), `text`, and `mixed` (half with images) — TRL 1.16 cannot run `mixed` (its
processor receives None images and raises); that failure is recorded, not hidden.

Completion tokens/s = completion tokens generated in the timed steps / their wall time.
The FLOP/s fraction is an estimate for lmmr1 of the work it executes: 2*N*tokens per forward
(N = transformer-block parameters; prompts counted once per group, as lmmr1 runs them; plus the
LM head on the positions it runs on), 3x for forward+backward, attention scores and the vision
tower left out; divided by step time and by the machine's measured fp32 matmul FLOP/s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REWARD_TARGET = "e"  # frequent in random text: rewards vary inside a group, so every step updates


def _images(k: int):
    from PIL import Image, ImageDraw

    out = []
    for i in range(k):
        im = Image.new("RGB", (112, 112), (30 * i % 255, 80, 160))
        ImageDraw.Draw(im).ellipse((10 + 5 * i, 20, 60 + 5 * i, 70), fill="white")
        out.append(im)
    return out


def _prompt_rows(workload: str, n_prompts: int):
    """[(text, image or None)] — identical for both frameworks."""
    imgs = _images(n_prompts)
    rows = []
    for i in range(n_prompts):
        has_img = workload == "image" or (workload == "mixed" and i % 2 == 0)
        rows.append((f"Describe what you see and count the shapes. Case {i}.", imgs[i] if has_img else None))
    return rows


def _target_fraction(text: str) -> float:
    t = "".join(text.split())
    return t.count(REWARD_TARGET) / len(t) if t else 0.0


# ----------------------------------------------------------------------------------- lmmr1 worker
def run_lmmr1(a) -> dict:
    import torch

    from lmmr1.trainer.config import load_config
    from lmmr1.trainer.trainer import Trainer

    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_lmmr1_"))
    data = tmp / "prompts.jsonl"
    with data.open("w") as fh:
        for k, (text, img) in enumerate(_prompt_rows(a.workload, a.prompts)):
            content = [{"type": "text", "text": text}]
            if img is not None:
                p = tmp / f"img{k}.png"
                img.save(p)
                content.insert(0, {"type": "image", "image": str(p)})
            fh.write(json.dumps({"message": [{"role": "user", "content": content}], "answer": "x"}) + "\n")
    cfg = load_config(None, [
        f"output_dir={tmp / 'run'}", f"model.path={a.model}", f"data=[{{path: {data}, system_prompt: none}}]",
        f"reward=[{{name: target_fraction, kwargs: {{target: {REWARD_TARGET}}}}}]", f"rollout.n={a.n}",
        f"rollout.max_new_tokens={a.max_new_tokens}", "rollout.temperature=1.0", f"train.prompts_per_step={a.prompts}",
        f"train.micro_batch_size={a.prompts * a.n}", "train.ppo_epochs=1", "train.tensorboard=false",
        f"algo.kl_coef={a.kl}", "algo.kl_estimator=k3", "optim.lr=1e-6", f"train.steps={a.warmup + a.steps}",
        f"train.num_threads={a.threads}",
    ])
    tr = Trainer(cfg)
    times, tokens, flops = [], [], []
    for i in range(a.warmup + a.steps):
        m = tr.train_step()
        if i >= a.warmup:
            times.append(m["time/step_s"])
            tokens.append(m["tokens_per_s"] * m["time/step_s"])
            flops.append(_step_flops(tr, m, a.prompts * a.n, a.n))
    tr.reward.close()
    return {"s_per_step": sum(times) / len(times), "tok_per_s": sum(tokens) / sum(times),
            "mean_len": sum(tokens) / len(tokens) / (a.prompts * a.n),
            "flops_per_s": sum(flops) / sum(times), "peak_rss_mb": _peak_rss_mb()}


def _step_flops(tr, m: dict, rows: int, n: int) -> float:
    """Estimated FLOPs of one lmmr1 step from its metrics (see module docstring)."""
    lm = tr.policy
    n_blocks = sum(p.numel() for name, p in lm.language_model.named_parameters() if "embed_tokens" not in name)
    head = lm.lm_head.weight.numel()
    lp, lc = m["prompt_length/mean"], m["response_length/mean"]
    prompts = rows // n
    rollout = 2 * n_blocks * (prompts * lp + rows * lc) + 2 * head * (prompts + rows * lc)
    # executed work: the training forward runs each prompt once per group (shared prefix)
    fwd = 2 * n_blocks * (prompts * lp + rows * lc) + 2 * head * rows * lc
    return float(rollout + 3 * fwd + (fwd if tr.ref is not None else 0))


# ------------------------------------------------------------------------------------- TRL worker
def run_trl(a) -> dict:
    import datasets
    import torch
    import transformers
    from transformers import (
        AutoModelForImageTextToText,
        AutoTokenizer,
        Qwen2VLImageProcessorPil,
        TrainerCallback,
    )
    from transformers.processing_utils import ProcessorMixin
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(a.threads)
    # Without torchvision the Qwen2.5-VL processor cannot be built as shipped (its video processor
    # needs torchvision); let the constructor accept video_processor=None for this benchmark only.
    orig = ProcessorMixin.check_argument_for_proper_class
    ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: None if arg is None else orig(self, name, arg)
    tok = AutoTokenizer.from_pretrained(a.model)
    proc = transformers.Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessorPil.from_pretrained(a.model),
                                            tokenizer=tok, video_processor=None, chat_template=tok.chat_template)
    rows = []
    for text, img in _prompt_rows(a.workload, a.prompts):
        content = ([{"type": "image"}] if img is not None else []) + [{"type": "text", "text": text}]
        row = {"prompt": [{"role": "user", "content": content}]}
        if a.workload != "text":  # a text-only dataset has no image column at all for TRL
            row["image"] = img
        rows.append(row)
    ds = datasets.Dataset.from_list(rows)

    def reward(prompts, completions, **kw):
        return [_target_fraction(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    marks = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            marks.append(["begin", time.perf_counter()])

        def on_step_end(self, args, state, control, **kw):
            marks.append(["end", time.perf_counter()])

    rows_per_step = a.prompts * a.n
    out_dir = tempfile.mkdtemp(prefix="bench_trl_")
    cfg = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=rows_per_step, num_generations=a.n,
                     max_completion_length=a.max_new_tokens, temperature=1.0, beta=a.kl, learning_rate=1e-6,
                     max_steps=a.warmup + a.steps, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                     seed=0, bf16=False, num_iterations=1, gradient_accumulation_steps=1, disable_tqdm=True)
    model = AutoModelForImageTextToText.from_pretrained(a.model, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=proc,
                          callbacks=[Timer()])
    trainer.train()
    begins = [t for k, t in marks if k == "begin"]
    ends = [t for k, t in marks if k == "end"]
    durations = [e - b for b, e in zip(begins, ends, strict=False)][a.warmup:]
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h][a.warmup:]
    tokens = [h["completions/mean_length"] * rows_per_step for h in logs]
    return {"s_per_step": sum(durations) / len(durations), "tok_per_s": sum(tokens) / sum(durations),
            "mean_len": sum(tokens) / len(tokens) / rows_per_step, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_flops(threads: int, n: int = 1024, reps: int = 10) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


# ------------------------------------------------------------------------------------- driver
def _cell(args, framework, size, model, workload, kl) -> dict:
    cmd = [sys.executable, __file__, "--worker", framework, "--model", str(model), "--workload", workload,
           "--kl", str(kl), "--steps", str(args.steps), "--warmup", str(args.warmup), "--prompts", str(args.prompts),
           "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    base = {"framework": framework, "size": size, "workload": workload, "kl": kl}
    if res.returncode != 0:
        err = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        return {**base, "error": err[-1][:160] if err else f"exit {res.returncode}"}
    return {**base, **json.loads(res.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["lmmr1", "trl"])
    ap.add_argument("--model")
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--workloads", default="image,mixed,text")
    ap.add_argument("--kls", default="0,0.04")
    ap.add_argument("--workload", default="image")
    ap.add_argument("--kl", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args()
    if a.worker:
        out = run_lmmr1(a) if a.worker == "lmmr1" else run_trl(a)
        print(json.dumps(out))
        return

    from lmmr1.models import make_tiny

    root = Path(tempfile.mkdtemp(prefix="bench_models_"))
    results = []
    for size in a.sizes.split(","):
        model = make_tiny(root / size, size=size, seed=0)
        for workload in a.workloads.split(","):
            for kl in [float(k) for k in a.kls.split(",")]:
                for fw in ("lmmr1", "trl"):
                    r = _cell(a, fw, size, model, workload, kl)
                    results.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
    peak = matmul_flops(a.threads)
    print(table(results, peak, a))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": results, "matmul_flops": peak}, indent=2))


def table(results: list[dict], peak: float, a) -> str:
    buf = io.StringIO()
    w = buf.write
    w(f"GRPO step, {a.prompts} prompts x n={a.n}, max {a.max_new_tokens} new tokens, 1 update epoch, "
      f"{a.threads} threads; mean of {a.steps} steps after {a.warmup} warm-up\n")
    w(f"machine fp32 matmul: {peak / 1e9:.1f} GFLOP/s\n\n")
    w("| size | workload | KL | lmmr1 s/step | TRL s/step | lmmr1 tok/s | TRL tok/s | lmmr1/TRL tok/s "
      "| lmmr1 peak RSS MB | TRL peak RSS MB | lmmr1 FLOP/s / matmul |\n")
    w("|---|---|---|---|---|---|---|---|---|---|---|\n")
    keyed = {(r["framework"], r["size"], r["workload"], r["kl"]): r for r in results}
    for (fw, size, workload, kl), r in keyed.items():
        if fw != "lmmr1":
            continue
        t = keyed.get(("trl", size, workload, kl), {})

        def f(x, fmt):
            return format(x, fmt) if isinstance(x, (int, float)) else "-"

        ratio = r["tok_per_s"] / t["tok_per_s"] if "tok_per_s" in r and "tok_per_s" in t else None
        trl_s = f(t.get("s_per_step"), ".3f") if "error" not in t else "fails"
        frac = r["flops_per_s"] / peak if "flops_per_s" in r else None
        w(f"| {size} | {workload} | {kl:g} | {f(r.get('s_per_step'), '.3f')} | {trl_s} | "
          f"{f(r.get('tok_per_s'), '.0f')} | {f(t.get('tok_per_s'), '.0f')} | "
          f"{(format(ratio, '.2f') + 'x') if ratio else '-'} | {f(r.get('peak_rss_mb'), '.0f')} | "
          f"{f(t.get('peak_rss_mb'), '.0f')} | {(format(frac * 100, '.1f') + '%') if frac else '-'} |\n")
    errors = [r for r in results if "error" in r]
    for r in errors:
        w(f"\n{r['framework']} {r['size']} {r['workload']} KL={r['kl']:g} failed: {r['error']}")
    return buf.getvalue()


if __name__ == "__main__":
    main()
