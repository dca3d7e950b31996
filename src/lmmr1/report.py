"""``report.html`` for a run directory: per-stage curves, the evaluation table, sample completions.

Self-contained HTML with inline SVG (no plotting library, no network), rebuilt from the files a run
writes (``summary.json``, each stage's ``metrics.jsonl``, ``eval.json``, ``samples.jsonl``), so
``lmmr1 report RUN_DIR`` can regenerate it at any time.  Works for a single-stage run directory too.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmmr1.errors import LmmR1Error

CURVES = (("reward/mean", "reward"), ("accuracy/mean", "accuracy (train)"),
          ("response_length/mean", "response length"), ("kl", "KL"), ("loss/sft", "SFT loss"))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def svg_line(xs: list[float], ys: list[float], title: str, w: int = 300, h: int = 150) -> str:
    pts = [(x, y) for x, y in zip(xs, ys, strict=False) if y is not None]
    if not pts:
        return ""
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    if x1 == x0:
        x1 = x0 + 1
    pad = 30

    def sx(x):
        return pad + (x - x0) / (x1 - x0) * (w - pad - 8)

    def sy(y):
        return h - pad + 8 - (y - y0) / (y1 - y0) * (h - pad - 8)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    return (f'<svg width="{w}" height="{h + 14}" class="chart"><text x="{w / 2}" y="12" text-anchor="middle">'
            f'{html.escape(title)}</text><g transform="translate(0,6)">'
            f'<line x1="{pad}" y1="{h - pad + 8}" x2="{w - 8}" y2="{h - pad + 8}" stroke="#999"/>'
            f'<line x1="{pad}" y1="8" x2="{pad}" y2="{h - pad + 8}" stroke="#999"/>'
            f'<text x="{pad - 3}" y="{sy(y1) + 4:.1f}" text-anchor="end">{y1:.3g}</text>'
            f'<text x="{pad - 3}" y="{sy(y0) + 4:.1f}" text-anchor="end">{y0:.3g}</text>'
            f'<text x="{pad}" y="{h - pad + 22}">{x0:g}</text>'
            f'<text x="{w - 8}" y="{h - pad + 22}" text-anchor="end">step {x1:g}</text>'
            f'<polyline fill="none" stroke="#2b6cb0" stroke-width="1.8" points="{line}"/></g></svg>')


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
            f"<td>{ev[s]['accuracy']:.3f}</td><td>{ev[s]['format_rate']:.3f}</td>" if s in ev else "<td>-</td><td>-</td>"
            for s in suites)
        parts.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    parts.append("</table>")
    return parts


def write_report(root: str | Path, compare: Sequence[str | Path] = ()) -> Path:
    """Write ``root/report.html``; ``compare`` adds a table of other runs' evaluations (e.g. the
    direct SFT -> MGT run next to SFT -> FRE -> MGT), stage by stage, on the same suites."""
    root = Path(root)
    stages = _stage_dirs(root)
    others = [(Path(c), _stage_dirs(Path(c))) for c in compare]  # fail before writing anything
    parts = [f"<h1>lmmr1 run: {html.escape(str(root))}</h1>"]
    table = _eval_table(_stage_evals(stages), "stage")
    if table:
        parts += ["<h2>Held-out evaluation</h2>", *table,
                  "<p class='note'>accuracy = the accuracy reward alone (never mixed with the format "
                  "bonus); greedy decoding unless the recipe says otherwise.</p>"]
    if others:
        rows = [(f"{run.name} / {name}", ev) for run, st in [(root, stages), *others] for name, ev in _stage_evals(st)]
        parts += ["<h2>Compared runs</h2>", *_eval_table(rows, "run / stage")]
    for name, sdir, st in stages:
        rows = _read_jsonl(sdir / "metrics.jsonl")
        parts.append(f"<h2>Stage: {html.escape(name)}</h2>")
        if st.get("wall_s") is not None:
            parts.append(f"<p>{len(rows)} steps, {st['wall_s']} s</p>")
        charts = []
        for key, title in CURVES:
            if any(key in r for r in rows):
                charts.append(svg_line([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r], title))
        parts.append("<div class='charts'>" + "".join(charts) + "</div>")
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
            for e in ev_examples:
                parts.append(f"<div class='sample'><b>eval {html.escape(e['suite'])}</b> gold "
                             f"{html.escape(str(e['answer']))}, accuracy {e['accuracy']}<pre>"
                             f"{html.escape(str(e['prompt']))[:400]}</pre><pre class='completion'>"
                             f"{html.escape(str(e['completion']))}</pre></div>")
            parts.append("</details>")
    style = ("<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             ".charts{display:flex;flex-wrap:wrap;gap:8px}.chart text{font-size:10px}"
             "pre{white-space:pre-wrap;background:#f6f6f6;padding:4px}.completion{background:#eef6ff}"
             ".note{color:#666;font-size:90%}</style>")
    out = root / "report.html"
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>lmmr1 report</title>{style}</head>"
                   f"<body>{''.join(parts)}</body></html>")
    return out
