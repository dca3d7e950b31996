"""The `lmmr1` command line.  Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lmmr1.errors import LmmR1Error

app = typer.Typer(
    name="lmmr1",
    help="Rule-based RL for large multimodal models (LMM-R1: FRE on text, then MGT on images).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


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
    from PIL import Image, UnidentifiedImageError

    from lmmr1.models import load_model
    from lmmr1.rollout import SamplingParams, sample

    images = []
    for p in image or []:
        try:
            images.append(Image.open(p).convert("RGB"))
        except FileNotFoundError as e:
            raise LmmR1Error(f"--image {p}: file not found") from e
        except UnidentifiedImageError as e:
            raise LmmR1Error(f"--image {p}: not a readable image") from e
    content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": prompt}]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    lm = load_model(model)
    rollout = sample(lm, lm.processor([messages]),
                     SamplingParams(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed))
    for k, text in enumerate(rollout.texts):
        typer.echo(f"--- sample {k} ({int(rollout.lengths[k])} tokens, {rollout.finish_reasons[k]})")
        typer.echo(text)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: a user error prints one line and exits 2; usage errors are typer's (exit 2)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars are noise for local directories
    try:
        app(args=argv, prog_name="lmmr1")
    except LmmR1Error as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
