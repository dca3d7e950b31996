"""``report.html`` for a run directory: training curves, held-out accuracy, sample completions.

Rebuilt from the files a run writes (``summary.json``, each stage's ``metrics.jsonl``, ``eval.json``,
``samples.jsonl``), so ``lmmr1 report RUN_DIR`` can regenerate it at any time; works for a
single-stage run directory too.  Charts are drawn with matplotlib (the ``report`` extra) and embedded
as inline SVG, so the report stays one self-contained file that opens offline.  Why matplotlib
rather than hand-made polylines: readers expect TensorBoard-like charts -- axes with values, raw and
smoothed curves, several runs on the same axes -- and a maintained plotting library gets ticks,
legends and layout right.

Layout: one chart per metric over the whole pipeline (stages laid end to end on one step axis, a
dashed line where each stage starts), raw values thin and an exponential moving average thick;
``--compare`` runs are overlaid on the same axes in their own colours; held-out accuracy per stage
(and per compared run) as grouped bars, one group per suite.

Only the standard library, json files and matplotlib (Agg, object API, no pyplot: no global backend
switch) are imported -- never torch -- so a report renders on a machine without the training stack.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmmr1.errors import LmmR1Error

CURVES = (("reward/mean", "reward"), ("accuracy/mean", "accuracy (train)"),
          ("response_length/mean", "response length (tokens)"), ("kl", "KL"), ("loss/sft", "SFT loss"))
SMOOTHING = 0.6  # TensorBoard's default EMA weight
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
CHARTS_MISSING = "report charts need matplotlib: pip install 'lmmr1[report]'"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise LmmR1Error(f"{path}:{i}: invalid JSON ({e.msg})") from None
    return out


def _stage_dirs(root: Path) -> list[tuple[str, Path, dict]]:
    summary = root / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        return [(st["name"], Path(st["dir"]), st) for st in s["stages"]]
    if (root / "metrics.jsonl").exists():  # a single-stage run directory
        return [(root.name, root, {})]
    raise LmmR1Error(f"{root} is not an lmmr1 run directory (no summary.json or metrics.jsonl)")


def _stage_evals(stages: list[tuple[str, Path, dict]]) -> list[tuple[str, dict]]:
    evals = []
    for name, sdir, st in stages:
        ev = st.get("eval") or {}
        if not ev and (sdir / "eval.json").exists():
            ev = json.loads((sdir / "eval.json").read_text())
        evals.append((name, ev))
    return evals


def _eval_table(rows: list[tuple[str, dict]], first_header: str) -> list[str]:
    """Stages (or run/stage pairs) x suites: accuracy and format rate."""
    suites = sorted({s for _, ev in rows for s in ev})
    if not suites:
        return []
    parts = [f"<table><tr><th>{html.escape(first_header)}</th>"
             + "".join(f"<th>{html.escape(s)}<br>accuracy</th><th>format</th>" for s in suites) + "</tr>"]
    for name, ev in rows:
        cells = "".join(
            f"<td>{ev[s]['accuracy']:.3f}</td><td>{ev[s]['format_rate']:.3f}"
            + (f"<br>return {ev[s]['mean_return']:.3f}" if "mean_return" in ev[s] else "")  # env suites
            + "</td>" if s in ev else "<td>-</td><td>-</td>"
            for s in suites)
        parts.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    parts.append("</table>")
    return parts


# ---------------------------------------------------------------------------------------- series
def ema(values: Sequence[float], weight: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing): the first point is the first
    value, not pulled towards 0; ``weight`` 0 returns the values unchanged."""
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = weight * last + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


@dataclass
class RunCurves:
    """One run's metrics on a single step axis: stage ``i`` starts after the last step of stage ``i-1``."""

    label: str
    # key -> one (xs, ys) segment per stage: lines and smoothing never run across a stage boundary
    series: dict[str, list[tuple[list[float], list[float]]]] = field(default_factory=dict)
    boundaries: list[tuple[float, str]] = field(default_factory=list)  # (x where a stage starts, stage name)
    last_step: float = 0.0


def run_curves(label: str, stages: list[tuple[str, Path, dict]]) -> RunCurves:
    rc = RunCurves(label)
    offset = 0.0
    for i, (name, sdir, _) in enumerate(stages):
        by_step: dict[float, dict] = {}
        for row in _read_jsonl(sdir / "metrics.jsonl"):
            if isinstance(row.get("step"), int | float):
                by_step[row["step"]] = row  # a resumed stage re-logs steps: the last row wins
        if i > 0 or len(stages) > 1:
            rc.boundaries.append((offset, name))
        for key, _ in CURVES:
            xs, ys = [], []
            for step in sorted(by_step):
                v = by_step[step].get(key)
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    xs.append(offset + step)
                    ys.append(float(v))
            if xs:
                rc.series.setdefault(key, []).append((xs, ys))
        offset += max(by_step, default=0)
    rc.last_step = offset
    return rc


# ---------------------------------------------------------------------------------------- drawing
def _matplotlib():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return matplotlib, Figure


def _svg(mpl, fig, chart_id: str) -> str:
    """The figure as an inline ``<svg>`` element: text kept as text (searchable, small), ids unique
    per chart so several charts can share one HTML page, no timestamp (reproducible reports)."""
    buf = io.StringIO()
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": chart_id, "font.sans-serif": ["DejaVu Sans"]}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S)  # RDF boilerplate
    return svg.replace("<svg ", f'<svg class="chart" id="{chart_id}" ', 1)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def curve_chart(mpl, figure_cls, key: str, title: str, runs: list[RunCurves], chart_id: str) -> str | None:
    """One metric, every run overlaid: raw thin, EMA thick, stage starts of the first run dashed."""
    if not any(key in r.series for r in runs):
        return None
    fig = figure_cls(figsize=(5.4, 3.1))
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        if key not in run.series:
            continue
        color = COLORS[i % len(COLORS)]
        for k, (xs, ys) in enumerate(run.series[key]):
            raw, = ax.plot(xs, ys, color=color, alpha=0.3, linewidth=1, marker="." if len(xs) <= 40 else None)
            raw.set_gid(f"series-{_safe(run.label)}-raw-{k}")
            smooth, = ax.plot(xs, ema(ys), color=color, linewidth=2, label=run.label if k == 0 else None)
            smooth.set_gid(f"series-{_safe(run.label)}-ema-{k}")
    main = runs[0]
    top = max(r.last_step for r in runs)
    for x, name in main.boundaries:
        line = ax.axvline(x + 0.5 if x else x, color="#666", linestyle="--", linewidth=0.9)
        line.set_gid(f"stage-boundary-{_safe(name)}")
        ax.annotate(name, xy=(x + 0.5 if x else x, 1), xycoords=("data", "axes fraction"), xytext=(3, -3),
                    textcoords="offset points", va="top", fontsize=8, color="#444")
    if top > 0:
        ax.set_xlim(0, top + 0.5)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step" + (" (stages end to end)" if len(main.boundaries) > 1 else ""), fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.25)
    if len(runs) > 1:
        ax.legend(fontsize=8, frameon=False)
    fig.text(0.99, 0.01, f"thin: raw; thick: EMA {SMOOTHING:g}", ha="right", va="bottom", fontsize=6, color="#888")
    return _svg(mpl, fig, chart_id)


def _shade(color: str, amount: float) -> str:
    """``color`` mixed towards white by ``amount`` (0..1): earlier stages of a run are lighter."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in (r, g, b))


def accuracy_bars(mpl, figure_cls, rows: list[tuple[str, dict, int, int, int]], chart_id: str) -> str | None:
    """Held-out accuracy: one group per suite, one bar per (run /) stage, the value on each bar.

    ``rows``: (label, eval, run index, stage index, stages in that run) -- a run keeps its curve
    colour, its stages going from light (first) to full (last)."""
    suites = sorted({s for _, ev, *_ in rows for s in ev})
    rows = [row for row in rows if row[1]]
    if not suites or not rows:
        return None
    fig = figure_cls(figsize=(max(5.4, 1.1 + 0.55 * len(suites) * len(rows)), 3.3))
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    for j, (name, ev, run, stage, n_stages) in enumerate(rows):
        xs = [k + (j - (len(rows) - 1) / 2) * width for k, s in enumerate(suites) if s in ev]
        vals = [float(ev[s]["accuracy"]) for s in suites if s in ev]
        color = _shade(COLORS[run % len(COLORS)], 0.6 * (n_stages - 1 - stage) / max(n_stages - 1, 1))
        bars = ax.bar(xs, vals, width * 0.92, label=name, color=color, edgecolor="#333", linewidth=0.4)
        for k, patch in enumerate(bars.patches):
            patch.set_gid(f"bar-{_safe(name)}-{k}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(suites)), suites, fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title("held-out accuracy per stage", fontsize=10)
    ax.grid(True, axis="y", alpha=0.25)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(mpl, fig, chart_id)


# ---------------------------------------------------------------------------------------- the page
def _labels(roots: list[Path]) -> list[str]:
    """Run names for legends: the folder name, or the whole path where two names collide."""
    names = [r.name or str(r) for r in roots]
    return [str(r) if names.count(n) > 1 else n for r, n in zip(roots, names, strict=True)]


def _eval_example(e: dict) -> str:
    """One held-out example: a single-turn answer with its gold, or a multi-turn episode's actions
    (env suites played turn by turn keep ``actions``, ``return`` and ``success`` instead)."""
    suite = html.escape(str(e.get("suite", "")))
    if "actions" in e:
        moves = " | ".join(str(a) for a in e.get("actions") or [])
        cut = f", truncated ({html.escape(str(e['truncated']))})" if e.get("truncated") else ""
        return (f"<div class='sample'><b>eval {suite}</b> episode {html.escape(str(e.get('source', '')))}: "
                f"success {e.get('success')}, return {e.get('return')}{cut}<pre class='completion'>"
                f"{html.escape(moves)}</pre></div>")
    return (f"<div class='sample'><b>eval {suite}</b> gold {html.escape(str(e.get('answer', '')))}, accuracy "
            f"{e.get('accuracy')}<pre>{html.escape(str(e.get('prompt', '')))[:400]}</pre><pre class='completion'>"
            f"{html.escape(str(e.get('completion', '')))}</pre></div>")


def write_report(root: str | Path, compare: Sequence[str | Path] = (), require_charts: bool = False) -> Path:
    """Write ``root/report.html``; ``compare`` overlays other runs' curves on the same charts and adds
    their evaluations (e.g. the direct SFT -> MGT run next to SFT -> FRE -> MGT), stage by stage.

    Without matplotlib the tables and samples are still written with a one-line note (a finished
    pipeline must not fail on its report), unless ``require_charts`` (``lmmr1 report``), which then
    raises the one-line :class:`LmmR1Error` naming the ``report`` extra.
    """
    root = Path(root)
    stages = _stage_dirs(root)
    others = [(Path(c), _stage_dirs(Path(c))) for c in compare]  # fail before writing anything
    drawing = _matplotlib()
    if drawing is None and require_charts:
        raise LmmR1Error(CHARTS_MISSING)
    labels = _labels([root, *(p for p, _ in others)])
    runs = [(labels[0], stages), *((labels[i + 1], st) for i, (_, st) in enumerate(others))]
    parts = [f"<h1>lmmr1 run: {html.escape(str(root))}</h1>"]
    if drawing is None:
        parts.append(f"<p class='note'>{html.escape(CHARTS_MISSING)}</p>")
    else:
        mpl, figure_cls = drawing
        curves = [run_curves(label, st) for label, st in runs]
        charts = [c for i, (key, title) in enumerate(CURVES)
                  if (c := curve_chart(mpl, figure_cls, key, title, curves, f"chart-{i}")) is not None]
        if charts:
            names = " vs ".join(html.escape(r.label) for r in curves)
            parts += [f"<h2>Training curves: {names}</h2>", "<div class='charts'>" + "".join(charts) + "</div>"]
    table = _eval_table(_stage_evals(stages), "stage")
    if table:
        parts.append("<h2>Held-out evaluation</h2>")
        if drawing is not None:
            bar_rows = [(f"{label} / {name}" if others else name, ev, r, k, len(st))
                        for r, (label, st) in enumerate(runs) for k, (name, ev) in enumerate(_stage_evals(st))]
            bars = accuracy_bars(drawing[0], drawing[1], bar_rows, "chart-eval")
            if bars:
                parts.append("<div class='charts'>" + bars + "</div>")
        parts += [*table, "<p class='note'>accuracy = the accuracy reward alone (never mixed with the format "
                          "bonus); greedy decoding unless the recipe says otherwise.</p>"]
    if others:
        rows = [(f"{run.name} / {name}", ev) for run, st in [(root, stages), *others] for name, ev in _stage_evals(st)]
        parts += ["<h2>Compared runs</h2>", *_eval_table(rows, "run / stage")]
    for name, sdir, st in stages:
        rows = _read_jsonl(sdir / "metrics.jsonl")
        parts.append(f"<h2>Stage: {html.escape(name)}</h2>")
        if st.get("wall_s") is not None:
            parts.append(f"<p>{len(rows)} steps, {st['wall_s']} s</p>")
        samples = _read_jsonl(sdir / "samples.jsonl")[-3:]
        ev_examples = []
        if (sdir / "eval.json").exists():
            for suite, r in json.loads((sdir / "eval.json").read_text()).items():
                ev_examples += [{**e, "suite": suite} for e in r.get("examples", [])[:2]]
        if samples or ev_examples:
            parts.append("<details><summary>sample completions</summary>")
            for smp in samples:
                parts.append(f"<div class='sample'><b>train step {smp.get('step')}</b> reward {smp.get('reward')}"
                             f"<pre>{html.escape(str(smp.get('prompt', '')))[:400]}</pre><pre class='completion'>"
                             f"{html.escape(str(smp.get('completion', '')))}</pre></div>")
            parts += [_eval_example(e) for e in ev_examples]
            parts.append("</details>")
    style = ("<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             ".charts{display:flex;flex-wrap:wrap;gap:8px}.chart{max-width:100%;height:auto}"
             "pre{white-space:pre-wrap;background:#f6f6f6;padding:4px}.completion{background:#eef6ff}"
             ".note{color:#666;font-size:90%}</style>")
    out = root / "report.html"
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>lmmr1 report</title>{style}</head>"
                   f"<body>{''.join(parts)}</body></html>")
    return out
