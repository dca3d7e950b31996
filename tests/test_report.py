"""report.html: matplotlib charts as inline SVG (axes with numbers, raw + EMA curves, stage boundaries,
compared runs overlaid, held-out accuracy as grouped bars), built without torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmmr1.errors import LmmR1Error
from lmmr1.report import _stage_dirs, ema, run_curves, write_report

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
NUMBER_LABEL = re.compile(r">(?:−|-)?\d+(?:\.\d+)?</text>")


def make_stage(d: Path, kind: str, steps: int, base: float) -> None:
    """A stage folder with the metrics.jsonl rows the trainer writes (SFT: loss; RL: reward/acc/len/KL)."""
    d.mkdir(parents=True)
    rows = []
    for s in range(1, steps + 1):
        if kind == "sft":
            rows.append({"step": s, "loss/sft": 2.0 / s, "grad_norm": 1.0, "response_length/mean": 30.0 + s})
        else:
            acc = min(1.0, base + 0.02 * s)
            rows.append({"step": s, "reward/mean": acc + 0.5, "accuracy/mean": acc,
                         "response_length/mean": 50.0 + s, "kl": 0.001 * s})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_pipeline(root: Path, stages: list[tuple[str, str, int]], acc0: float) -> Path:
    """A finished pipeline output_dir: {i}_{name}/ per stage and summary.json as pipeline.py writes it."""
    summary = []
    for i, (name, kind, steps) in enumerate(stages):
        d = root / f"{i}_{name}"
        make_stage(d, kind, steps, acc0 + 0.1 * i)
        ev = {suite: {"accuracy": round(acc0 + 0.1 * i + off, 3), "format_rate": 0.9, "mean_length": 40.0,
                      "problems": 20} for suite, off in (("arith_image", 0.0), ("arith_text", 0.05))}
        summary.append({"name": name, "type": "sft" if kind == "sft" else "rl", "dir": str(d),
                        "model": str(d / "final"), "wall_s": 3.5, "eval": ev})
    (root / "summary.json").write_text(json.dumps({"recipe": "r.yaml", "output_dir": str(root), "stages": summary,
                                                   "final_model": summary[-1]["model"]}, indent=2))
    return root


@pytest.fixture
def runs(tmp_path):
    main = make_pipeline(tmp_path / "fre_mgt", [("sft", "sft", 4), ("fre", "rl", 6), ("mgt", "rl", 5)], 0.2)
    direct = make_pipeline(tmp_path / "direct", [("sft", "sft", 4), ("mgt", "rl", 8)], 0.1)
    return main, direct


def charts(report: str) -> dict[str, str]:
    return dict(re.findall(r'(<svg class="chart" id="([^"]+)".*?</svg>)', report, re.S)[i][::-1]
                for i in range(report.count('<svg class="chart"')))


def test_ema_is_debiased_and_hand_checked():
    assert ema([1.0, 0.0, 0.0], 0.5) == pytest.approx([1.0, 1 / 3, 1 / 7])  # (0.5)/(0.5), .25/.75, .125/.875
    assert ema([3.0, 5.0], 0.0) == [3.0, 5.0]


def test_pipeline_stages_are_laid_end_to_end(runs):
    rc = run_curves("fre_mgt", _stage_dirs(runs[0]))
    assert rc.boundaries == [(0.0, "sft"), (4.0, "fre"), (10.0, "mgt")] and rc.last_step == 15
    # one segment per stage: reward exists in fre (steps 5..10) and mgt (11..15), never bridged
    assert [xs for xs, _ in rc.series["reward/mean"]] == [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]
    assert rc.series["loss/sft"] == [([1, 2, 3, 4], [2.0, 1.0, 2 / 3, 0.5])]


def test_report_charts_have_numbered_axes_and_stage_boundaries(runs):
    report = write_report(runs[0]).read_text()
    got = charts(report)
    assert set(got) == {"chart-0", "chart-1", "chart-2", "chart-3", "chart-4", "chart-eval"}  # 5 curves + bars
    for cid, svg in got.items():
        assert len(NUMBER_LABEL.findall(svg)) >= 4, cid  # tick labels are numbers, kept as text
    reward = got["chart-0"]
    assert ">reward</text>" in reward and "step (stages end to end)" in reward
    for name in ("sft", "fre", "mgt"):
        assert f'id="stage-boundary-{name}"' in reward and f">{name}</text>" in reward
    assert 'id="series-fre_mgt-raw-0"' in reward and 'id="series-fre_mgt-ema-1"' in reward
    bars = got["chart-eval"]
    assert ">held-out accuracy per stage</text>" in bars and ">arith_image</text>" in bars
    assert ">0.40</text>" in bars and ">0.45</text>" in bars  # mgt's values (0.2 + 0.1*2, + 0.05) on its bars
    assert not re.search(r'(src|href)="?https?:', report) and "<script" not in report  # nothing fetched


def test_compare_overlays_runs_on_the_same_axes(runs):
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "report", str(runs[0]), "--compare", str(runs[1])],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert res.returncode == 0, res.stderr
    got = charts((runs[0] / "report.html").read_text())
    reward = got["chart-0"]
    for run in ("fre_mgt", "direct"):
        assert f'id="series-{run}-ema-0"' in reward and f">{run}</text>" in reward  # both series + legend
    assert 'id="series-direct-ema-1"' not in reward  # direct has one RL stage: one reward segment
    assert ">direct / mgt</text>" in got["chart-eval"] and ">fre_mgt / fre</text>" in got["chart-eval"]


def test_single_stage_run_has_no_boundaries(tmp_path):
    make_stage(tmp_path / "one", "rl", 3, 0.5)
    got = charts(write_report(tmp_path / "one").read_text())
    assert set(got) == {"chart-0", "chart-1", "chart-2", "chart-3"} and "stage-boundary" not in got["chart-0"]


def test_bad_metrics_line_is_one_line_error(tmp_path):
    make_stage(tmp_path / "one", "rl", 2, 0.5)
    with (tmp_path / "one" / "metrics.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(LmmR1Error, match=r"one/metrics.jsonl:3: invalid JSON"):
        write_report(tmp_path / "one")


def _run_blocked(blocked: str, *args: str) -> subprocess.CompletedProcess:
    """``lmmr1 ARGS`` in a process where importing ``blocked`` fails (as if it were not installed)."""
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            "from lmmr1.cli import main\n"
            f"rc = main({list(args)!r})\n"
            f"assert {blocked!r} not in sys.modules or sys.modules[{blocked!r}] is None\n"
            "sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)


def test_report_works_without_torch(runs):
    res = _run_blocked("torch", "report", str(runs[0]), "--compare", str(runs[1]))
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert len(charts((runs[0] / "report.html").read_text())) == 6


def test_report_without_matplotlib(runs):
    res = _run_blocked("matplotlib", "report", str(runs[0]))
    assert res.returncode == 2 and "pip install 'lmmr1[report]'" in res.stderr and "Traceback" not in res.stderr
    # a finished pipeline still gets its tables (library default), with the note instead of charts
    code = ("import sys; sys.modules['matplotlib'] = None\nfrom lmmr1.report import write_report\n"
            f"print(write_report({str(runs[0])!r}).read_text())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 0, out.stderr
    assert "<svg" not in out.stdout and "Held-out evaluation" in out.stdout and "lmmr1[report]" in out.stdout


def test_eval_examples_of_single_turn_and_multi_turn_suites_are_shown(runs):
    """A stage's eval.json keeps examples: single-turn ones have a gold answer and a completion,
    multi-turn episodes (env suites played turn by turn) their actions, return and success."""
    stage = runs[0] / "2_mgt"
    (stage / "eval.json").write_text(json.dumps({
        "arith_text": {"accuracy": 0.5, "examples": [{"answer": "12", "accuracy": 1.0, "prompt": "What is 3*4?",
                                                      "completion": "<answer>12</answer>"}]},
        "sokoban_turns": {"accuracy": 0.0, "examples": [{"source": "levels.jsonl:3", "actions": ["Up", "Left <b>"],
                                                         "return": -0.2, "success": False, "truncated": "turns"}]}}))
    report = write_report(runs[0]).read_text()
    assert "gold 12, accuracy 1.0" in report and "&lt;answer&gt;12&lt;/answer&gt;" in report
    assert ("episode levels.jsonl:3: success False, return -0.2, truncated (turns)" in report
            and "Up | Left &lt;b&gt;" in report)
