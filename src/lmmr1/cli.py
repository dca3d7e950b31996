"""The `lmmr1` command line.  Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from lmmr1.errors import LmmR1Error

app = typer.Typer(
    name="lmmr1",
    help="Rule-based RL for large multimodal models (LMM-R1: FRE on text, then MGT on images).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _version() -> str:
    """The installed distribution's version (what pip reports), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmmr1")
    except PackageNotFoundError:
        from lmmr1 import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"lmmr1 {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the lmmr1 version and exit.")] = False,
) -> None:
    """Rule-based RL for large multimodal models (LMM-R1: FRE on text, then MGT on images)."""


@app.command("make-tiny")
def make_tiny_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the checkpoint into.")],
    text_only: Annotated[bool, typer.Option("--text-only", help="A Qwen2 causal LM instead of a Qwen2.5-VL.")] = False,
    size: Annotated[str, typer.Option(help="tiny (~1M params, tests) or small (~30M, benchmarks/demo).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed for the tokenizer corpus and the random weights.")] = 0,
    arch: Annotated[str, typer.Option(help="VLM architecture: qwen2_5_vl or qwen2_vl.")] = "qwen2_5_vl",
) -> None:
    """Build a complete Hugging Face checkpoint offline (tokenizer, processor config, random weights)."""
    from lmmr1.models.tiny import make_tiny

    out = make_tiny(out_dir, size=size, text_only=text_only, seed=seed, arch=arch)
    import json

    info = json.loads((out / "lmmr1_tiny.json").read_text())
    console.print(f"wrote {info['arch']} ({info['size']}, {info['parameters']:,} parameters) to {out}")


@app.command("generate")
def generate_cmd(
    model: Annotated[Path, typer.Argument(help="Local HF checkpoint directory.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The user message.")],
    image: Annotated[list[Path] | None, typer.Option("--image", "-i", help="Image file(s) placed before the text.")] = None,
    n: Annotated[int, typer.Option("--n", "-n", help="Samples to draw.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum new tokens per sample.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    system: Annotated[str | None, typer.Option(help="Optional system prompt.")] = None,
) -> None:
    """Sample completions for one prompt (optionally with images) with the built-in sampler."""
    from lmmr1.data.images import ImageError, decode_image
    from lmmr1.models import load_model
    from lmmr1.rollout import SamplingParams, sample

    images = []
    for p in image or []:  # the training reader's decoder: 16-bit, bombs and extreme aspects handled alike
        if not p.is_file():
            raise LmmR1Error(f"--image {p}: file not found")
        try:
            images.append(decode_image(p))
        except ImageError as e:
            raise LmmR1Error(f"--image {p}: {e}") from e
    content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": prompt}]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    lm = load_model(model)
    rollout = sample(lm, lm.processor([messages]),
                     SamplingParams(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed))
    for k, text in enumerate(rollout.texts):
        typer.echo(f"--- sample {k} ({int(rollout.lengths[k])} tokens, {rollout.finish_reasons[k]})")
        typer.echo(text)


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_cmd(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="YAML recipe (sections: model, data, reward, rollout, algo, optim, train).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check recipe, every data row and image, rewards, model "
                                          "files and output_dir without loading weights; then exit.")] = False,
) -> None:
    """Train (RL, SFT, or a multi-stage pipeline). Extra arguments are dotted overrides, e.g. train.steps=20."""
    from lmmr1.pipeline import is_pipeline, run_pipeline
    from lmmr1.trainer.config import load_config
    from lmmr1.trainer.trainer import train

    if dry_run:
        from lmmr1.dryrun import dry_run as check
        from lmmr1.dryrun import format_summary

        for line in format_summary(check(recipe, list(ctx.args))):
            typer.echo(line)
        typer.echo("dry run: everything checked; no weights were loaded and nothing was written")
        return
    try:
        if is_pipeline(recipe):
            run_pipeline(recipe, list(ctx.args), console)
            return
        cfg = load_config(recipe, list(ctx.args))
        train(cfg, console)
    except KeyboardInterrupt:
        # The run has already said how it stopped and how to resume; a late second Ctrl-C while the
        # interpreter exits must not turn that clean exit 130 into a death by signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise typer.Exit(130) from None


@app.command("config", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def config_cmd(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="YAML recipe (single stage or pipeline).")],
) -> None:
    """Print the fully resolved recipe (every default, overrides applied, paths absolute) as YAML that
    `lmmr1 train` accepts back. Extra arguments are dotted overrides, as for train."""
    from lmmr1.trainer.config import resolved_recipe

    typer.echo(resolved_recipe(recipe, list(ctx.args)), nl=False)


def _episode_options(items: list[str]) -> dict:
    """``--episode KEY=VALUE`` items -> EpisodeConfig keyword arguments (values read as YAML scalars)."""
    import dataclasses

    import yaml

    from lmmr1.trainer.config import EpisodeConfig

    known = {f.name for f in dataclasses.fields(EpisodeConfig)}
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise LmmR1Error(f"--episode {item!r} must be KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        out[key] = yaml.safe_load(value) if key not in ("observation_template", "invalid_feedback") else value
    turns = out.get("turns")
    if out and (not isinstance(turns, int) or isinstance(turns, bool) or turns < 1):
        raise LmmR1Error(f"--episode turns={turns!r}: give the most turns per episode, an integer >= 1")
    return out


@app.command("eval")
def eval_cmd(
    model: Annotated[Path, typer.Option("--model", help="Local HF checkpoint directory.")],
    bench: Annotated[list[str], typer.Option("--bench", help="NAME=PATH of a benchmark file (repeatable).")],
    n: Annotated[int, typer.Option(help="Samples per problem (pass@n); > 1 needs --temperature > 0.")] = 1,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum new tokens (room for a reasoning trace; "
                                                     "the 'truncated' column shows answers cut off).")] = 2048,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    system_prompt: Annotated[str, typer.Option(help="r1, r1_boxed, lmm_r1, none, or custom text.")] = "r1",
    limit: Annotated[int | None, typer.Option(help="Use only the first N problems of each benchmark.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed (same seed, same samples at temperature > 0).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the results JSON here.")] = None,
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu, cuda, cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="Parameter dtype, as model.dtype in training (auto = fp32).")] = "auto",
    compute_dtype: Annotated[str, typer.Option(help="Compute dtype, as model.compute_dtype in training "
                                                    "(auto = bf16 autocast on a bf16 GPU).")] = "auto",
    episode: Annotated[list[str] | None, typer.Option(
        "--episode", help="Play env suites turn by turn: KEY=VALUE of the episode: section, e.g. "
                          "--episode turns=6 --episode context=current (repeatable).")] = None,
) -> None:
    """Evaluate a model on benchmark files (MathVista, MathVerse, MathVision, DynaMath, LMM-R1 JSONL)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from lmmr1.data.benchmarks import load_benchmark
    from lmmr1.eval import TRUNCATION_WARN_FRACTION, EvalConfig, evaluate, write_results
    from lmmr1.models import load_model

    cfg = EvalConfig(n=n, temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                     episode=_episode_options(episode or []))
    for w in cfg.check():  # invalid values raise here, before any file or model is read
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
    suites = {}
    for item in bench:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise LmmR1Error(f"--bench {item!r} must look like NAME=PATH, e.g. mathvista=testmini.parquet")
        if name in suites:
            raise LmmR1Error(f"--bench name {name!r} is given twice; give each benchmark its own name")
        suites[name] = load_benchmark(path, name=name, system_prompt=system_prompt, limit=limit)
    from lmmr1.models.precision import resolve_device, resolve_precision

    dev = resolve_device(device)
    precision = resolve_precision(dtype, compute_dtype, dev)  # the same meaning as in training
    lm = load_model(model, dtype=precision.param, device=dev)
    progress = Progress(TextColumn("[bold]eval {task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total} problems"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    tasks: dict[str, int] = {}

    def advance(suite: str, done: int, total: int) -> None:
        if suite not in tasks:
            tasks[suite] = progress.add_task(suite, total=total)
        progress.update(tasks[suite], completed=done)

    with progress:
        results = evaluate(lm, suites, cfg, progress=advance, precision=precision)
    table = Table(title=f"lmmr1 eval: {model} ({dev}, {precision.describe()})")
    for col in ("benchmark", "problems", "accuracy", "format rate", f"pass@{n}", "mean length", "truncated"):
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    for name, r in results.items():
        table.add_row(name, str(r["problems"]), f"{r['accuracy']:.4f}", f"{r['format_rate']:.4f}",
                      f"{r[f'pass@{n}']:.4f}", f"{r['mean_length']:.1f}", f"{r['truncated']:.1%}")
        for src, v in r["by_datasource"].items():
            table.add_row(f"  {src}", "", f"{v:.4f}", "", "", "", "")
    console.print(table)
    for name, r in results.items():
        if "mean_return" in r:  # env suites: accuracy is the success rate of the replayed answers
            console.print(f"{name}: success rate {r['success_rate']:.4f}   mean return {r['mean_return']:.4f}")
    for name, r in results.items():
        if r["truncated"] > TRUNCATION_WARN_FRACTION:
            console.print(f"[yellow]warning:[/] {name}: {r['truncated']:.0%} of samples hit --max-new-tokens "
                          f"{max_new_tokens} before ending; their answers were cut off (raise --max-new-tokens)",
                          highlight=False, soft_wrap=True)
    if out is not None:
        write_results({"model": str(model), "config": cfg.__dict__, "results": results}, out)
        console.print(f"results: {out}")


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (pipeline or single stage).")],
    compare: Annotated[list[Path] | None, typer.Option(metavar="RUN_DIR", help="Another run directory to overlay on the charts "
                                                          "and tabulate (repeatable), e.g. the direct SFT -> MGT run.")] = None,
) -> None:
    """Rebuild report.html (charts, evaluation table, sample completions) from a run directory (needs matplotlib)."""
    from lmmr1.report import write_report

    console.print(f"wrote {write_report(run_dir, compare or [], require_charts=True)}")


data_app = typer.Typer(help="Dataset tools.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def synth_cmd(
    suite: Annotated[str, typer.Argument(help="arithmetic, counting, geometry, jigsaw, sokoban or football.")],
    out: Annotated[Path, typer.Option(help="Output folder (JSONL files + images/).")],
    split: Annotated[str, typer.Option(help="train, val or test (disjoint, deterministic).")] = "train",
    n: Annotated[int, typer.Option(help="Number of problems.")] = 1000,
    modality: Annotated[str, typer.Option(help="text, image or both.")] = "both",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 112,
    knob: Annotated[list[str] | None, typer.Option(help="Difficulty knob KEY=VALUE, e.g. max_operand=20.")] = None,
) -> None:
    """Write a synthetic verifiable task suite in the LMM-R1 format (text and image versions)."""
    import yaml

    from lmmr1.data.synth import write_suite

    knobs = {}
    for k in knob or []:
        if "=" not in k:
            raise LmmR1Error(f"--knob {k!r} must look like KEY=VALUE")
        key, val = k.split("=", 1)
        knobs[key] = yaml.safe_load(val)
    written = write_suite(out, suite, split, n, modality, seed=seed, image_size=image_size, **knobs)
    for mod, path in written.items():
        made = sum(1 for _ in path.open())
        console.print(f"{mod}: {path} ({made} problems)")
    if written and made < n:
        from lmmr1.data.synth import shortfall_message

        console.print(f"[yellow]warning:[/] {shortfall_message(suite, split, n, made, knobs)}", highlight=False,
                      soft_wrap=True)


@data_app.command("render")
def render_cmd(
    input: Annotated[Path, typer.Argument(help="LMM-R1 dataset: .jsonl, .json, .parquet or a datasets folder.")],
    out: Annotated[Path, typer.Option(help="Output JSONL (rows with the problem as an image).")],
    images_dir: Annotated[Path | None, typer.Option(help="Where the PNGs go (default: OUT_STEM_images/ next to --out).")] = None,
    width: Annotated[int, typer.Option(help="Image width in pixels (height follows the text).")] = 768,
    font_size: Annotated[float, typer.Option(help="Font size in points (text and maths).")] = 14.0,
    dpi: Annotated[int, typer.Option(help="Dots per inch: pixels per point = dpi/72.")] = 100,
    instruction: Annotated[str, typer.Option(help="Text kept in the user turn after the image ('' for none).")] = "Solve the problem in the image.",
    workers: Annotated[int, typer.Option(help="Worker processes (0 = the CPU count).")] = 0,
    strict: Annotated[bool, typer.Option("--strict", help="A formula mathtext cannot typeset is an error (default: drawn as source text, counted).")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip (and count) invalid rows instead of stopping at the first.")] = False,
) -> None:
    """Render text problems (with LaTeX maths) into images: the FRE-Multi data of LMM-R1."""
    import os

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from lmmr1.data.render import RenderConfig
    from lmmr1.data.render_rows import render_dataset

    if workers < 0:
        raise LmmR1Error(f"--workers must be >= 0 (0 = the CPU count), got {workers}")
    progress = Progress(TextColumn("[bold]render"), BarColumn(), TextColumn("{task.completed}/{task.total} rows"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task("render", total=None)
    with progress:
        summary = render_dataset(input, out, RenderConfig(width=width, font_size=font_size, dpi=dpi),
                                 images_dir=images_dir, instruction=instruction,
                                 workers=workers or (os.cpu_count() or 1), strict=strict, skip_invalid=skip_invalid,
                                 progress=lambda done, total: progress.update(task, completed=done, total=total))
    for line in summary.report_lines(limit=20):
        warn = line.startswith("warning:")
        console.print(("[yellow]warning:[/]" + escape(line[8:])) if warn else escape(line), highlight=False,
                      soft_wrap=True)


@data_app.command("prepare")
def prepare_cmd(
    input: Annotated[Path | None, typer.Argument(help="One released JSONL/JSON file (or use --lmm-r1 DIR).")] = None,
    out: Annotated[Path, typer.Option(help="Output file (with INPUT) or folder (with --lmm-r1).")] = Path("data"),
    lmm_r1: Annotated[Path | None, typer.Option("--lmm-r1", help="Folder holding the downloaded LMM-R1 datasets: "
                                                "writes deepscaler_40k, vermulti_percereason and vermulti_geo .jsonl into --out.")] = None,
    image_root: Annotated[Path | None, typer.Option(help="Folder the released images were unpacked into: absolute "
                                                    "image paths of the authors' machine are looked up under it.")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip (and count) rows whose images are missing "
                                               "instead of stopping at the first.")] = False,
) -> None:
    """Turn the released LMM-R1 data (DeepScaleR-40K, VerMulti) into the files recipes/lmm_r1/* read."""
    from lmmr1.data.prepare import prepare_file, prepare_released

    if (input is None) == (lmm_r1 is None):
        raise LmmR1Error("give either one INPUT file or --lmm-r1 DOWNLOAD_DIR")
    done = [prepare_file(input, out, image_root, skip_invalid=skip_invalid)] if input is not None else \
        prepare_released(lmm_r1, out, image_root, skip_invalid=skip_invalid)
    for p in done:
        console.print(f"{p.out}: {p.rows} rows, {p.images} images (from {p.source})", markup=False, highlight=False,
                      soft_wrap=True)
        if p.skipped:
            console.print(f"[yellow]warning:[/] {len(p.skipped)} rows skipped, first: "
                          f"{escape(p.skipped[0][0])}: {escape(p.skipped[0][1])}", highlight=False, soft_wrap=True)


@app.command("score")
def score_cmd(
    input: Annotated[Path, typer.Argument(help="JSONL; each line has 'completion' and 'answer' (+ any fields).")],
    reward: Annotated[list[str] | None, typer.Option(help="Rewards: names (format,accuracy), FILE.py:FUNCTION, or the "
                                                          "recipe syntax as YAML, e.g. '{path: r.py, name: fn, "
                                                          "kwargs: {k: 1}, timeout: 10}'. Repeatable.")] = None,
    weights: Annotated[str | None, typer.Option(help="Comma-separated weights, same order as --reward.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output JSONL (default: stdout); missing folders are created.")] = None,
    timeout: Annotated[float, typer.Option(help="Hard per-item math-verify timeout in seconds.")] = 5.0,
) -> None:
    """Score completions with rule rewards; each output line = input + rewards + reward (or error)."""
    from rich.table import Table

    from lmmr1.rewards.compose import check_rewards, parse_cli_rewards
    from lmmr1.rewards.score import score_file

    specs = parse_cli_rewards(reward or ["format,accuracy"], weights)
    for s in specs:
        if s.name == "accuracy" and not s.path and not s.url:
            s.kwargs.setdefault("timeout", timeout)
    if not input.is_file():
        raise LmmR1Error(f"cannot read {input}: not a file")
    composite = check_rewards(specs)
    try:
        if out is None:
            summary = score_file(input, composite, sys.stdout)
        else:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                fh = out.open("w", encoding="utf-8")
            except OSError as e:
                raise LmmR1Error(f"--out {out}: cannot write there ({e.strerror or e})") from None
            with fh:
                summary = score_file(input, composite, fh)
    finally:
        composite.close()
    table = Table(title=f"lmmr1 score: {input}")
    table.add_column("component")
    table.add_column("weight", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("rows scored", justify="right")
    for name, w in composite.weights.items():
        m = summary.mean(name)
        table.add_row(name, f"{w:g}", "-" if m is None else f"{m:.4f}", str(summary.counts.get(name, 0)))
    m = summary.mean("reward")
    table.add_row("[bold]total[/]", "", "-" if m is None else f"{m:.4f}", str(summary.counts.get("reward", 0)))
    console.print(table)
    timeouts = sum(v for k, v in summary.stats.items() if k.endswith("timeouts"))
    console.print(f"rows: {summary.rows}   error rows: {summary.error_rows}   math-verify timeouts: {timeouts}")
    if summary.counts.get("success"):  # env rewards (sokoban, football): replays that solved the task
        console.print(f"success: {summary.sums['success']:.0f}/{summary.counts['success']} "
                      f"({summary.mean('success'):.1%})")


@app.command("serve-rewards")
def serve_rewards_cmd(
    reward: Annotated[list[str] | None, typer.Option(help="Rewards: names (format,accuracy), FILE.py:FUNCTION, or the "
                                                          "recipe syntax as YAML. Repeatable.")] = None,
    weights: Annotated[str | None, typer.Option(help="Comma-separated weights, same order as --reward.")] = None,
    host: Annotated[str, typer.Option(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    max_body_mb: Annotated[float, typer.Option(help="Largest accepted request body, MiB.")] = 16.0,
    workers: Annotated[int, typer.Option(help="Scoring threads (requests scored at once).")] = 8,
    score_timeout: Annotated[float, typer.Option(help="Seconds one request's scoring may take (then 504).")] = 600.0,
    access_log: Annotated[bool, typer.Option(help="One line per request on stderr.")] = True,
) -> None:
    """Serve rewards over HTTP (LMM-R1's POST /get_reward, plus POST /rewards with components).

    starlette + uvicorn (``pip install 'lmmr1[server]'``); Ctrl-C finishes in-flight requests and exits 0.
    """
    from lmmr1.rewards.compose import check_rewards, parse_cli_rewards
    from lmmr1.rewards.server import make_server

    if not 0 < max_body_mb < 1024 * 1024:
        raise LmmR1Error(f"--max-body-mb must be > 0, got {max_body_mb:g}")
    composite = check_rewards(parse_cli_rewards(reward or ["format,accuracy"], weights))
    try:
        server = make_server(composite, host, port, int(max_body_mb * 1024 * 1024), workers=workers,
                             score_timeout=score_timeout,
                             access_log=(lambda line: print(line, file=sys.stderr, flush=True)) if access_log else None)
    except LmmR1Error:
        composite.close()
        raise
    console.print(f"serving {', '.join(composite.names)} on http://{host}:{server.server_address[1]} "
                  "(POST /get_reward, POST /rewards, GET /health); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        composite.close()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: a user error prints one line and exits 2; usage errors are typer's (exit 2)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars are noise for local directories
    try:
        app(args=argv, prog_name="lmmr1")
    except LmmR1Error as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
