"""`lmmr1 eval` on env suites: accuracy is the success rate of replaying each answer in its env,
plus the mean episode return; in results, the CLI table, the pipeline summary and the report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmmr1.data.benchmarks import load_benchmark
from lmmr1.data.synth import write_suite
from lmmr1.envs import EnvError
from lmmr1.errors import LmmR1Error
from lmmr1.eval import EvalConfig, evaluate
from lmmr1.models import load_model
from lmmr1.report import _eval_table
from lmmr1.rewards.agents import env_score


def test_env_score_known_answers():
    env = {"name": "sokoban", "level": ["#####", "#@$.#", "#####"]}
    ok = env_score("<think>t</think><answer>Left, Right</answer>", env)
    assert ok.success and ok.ret == pytest.approx(-0.1 + 10.9)  # plain return, not the best prefix
    assert not env_score("<answer>Left</answer>", env).success and env_score("no answer", env).ret == 0.0
    with pytest.raises(EnvError, match="no single-turn scorer for env 'chess'"):
        env_score("<answer>e4</answer>", {"name": "chess"})


def test_evaluate_env_suite_with_a_real_model(tiny_vlm, tmp_path):
    paths = write_suite(tmp_path, "sokoban", "test", 3, "both", seed=1)
    suites = {m: load_benchmark(p, name=m) for m, p in paths.items()}
    lm = load_model(tiny_vlm)
    cfg = EvalConfig(n=2, temperature=1.0, max_new_tokens=8, batch_size=2, samples_per_suite=100)
    res = evaluate(lm, suites, cfg)
    for name, r in res.items():
        assert r["problems"] == 3 and r["success_rate"] == r["accuracy"]
        rows = {ex.source: ex.fields["env"] for ex in suites[name].examples}
        scores = [env_score(e["completion"], rows[e["source"]]) for e in r["examples"]]
        assert len(scores) == 6
        assert r["accuracy"] == pytest.approx(sum(s.success for s in scores) / 6)
        assert r["mean_return"] == pytest.approx(sum(s.ret for s in scores) / 6)
        assert [e["accuracy"] for e in r["examples"]] == [float(s.success) for s in scores]
    arith = write_suite(tmp_path, "arithmetic", "test", 2, "text")["text"]
    plain = evaluate(lm, {"a": load_benchmark(arith)}, EvalConfig(max_new_tokens=4))["a"]
    assert "mean_return" not in plain and "success_rate" not in plain


def test_broken_env_field_names_the_row(tiny_vlm, tmp_path):
    p = write_suite(tmp_path, "sokoban", "test", 1, "text")["text"]
    row = json.loads(p.read_text())
    row["env"]["level"] = ["#####", "#@$?#", "#####"]
    p.write_text(json.dumps(row) + "\n")
    with pytest.raises(LmmR1Error, match=r"sokoban_test_text.jsonl.*:1: field 'env': .*column 4"):
        evaluate(load_model(tiny_vlm), {"s": load_benchmark(p)}, EvalConfig(max_new_tokens=2))


def test_cli_eval_prints_success_and_return(tiny_vlm, tmp_path):
    p = write_suite(tmp_path, "football", "test", 2, "text")["text"]
    out = tmp_path / "res.json"
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "eval", "--model", str(tiny_vlm), "--bench",
                          f"fb={p}", "--max-new-tokens", "4", "--out", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    r = json.loads(out.read_text())["results"]["fb"]
    assert "success_rate" in r and "mean_return" in r
    assert f"fb: success rate {r['success_rate']:.4f} mean return {r['mean_return']:.4f}" in " ".join(
        (res.stdout + res.stderr).split())


def test_report_table_shows_the_return():
    html = "".join(_eval_table([("rl", {"sok": {"accuracy": 0.5, "format_rate": 1.0, "mean_return": 3.25}}),
                                ("sft", {"sok": {"accuracy": 0.25, "format_rate": 1.0}})], "stage"))
    assert "return 3.250" in html and html.count("return") == 1


def test_pipeline_trains_on_sokoban_and_summarises_success_and_return(tmp_path):
    """One GRPO step with the sokoban reward (LMM-R1's single-turn way), then the held-out env suite:
    summary.json carries success_rate (= accuracy) and mean_return, report.html shows the return."""
    import os

    import yaml

    out = tmp_path / "run"
    recipe = {
        "output_dir": str(out), "model": {"tiny": "tiny"},
        "synth": [{"suite": "sokoban", "split": "train", "n": 8, "modality": "text"},
                  {"suite": "sokoban", "split": "test", "n": 3, "modality": "text"}],
        "eval": {"suites": {"sok": "synth:sokoban_test_text"}, "system_prompt": "none", "max_new_tokens": 8},
        "rollout": {"n": 2, "max_new_tokens": 8}, "optim": {"lr": 0.001},
        "train": {"prompts_per_step": 2, "micro_batch_size": 4, "tensorboard": False, "num_threads": 2},
        "reward": [{"name": "sokoban"}],
        "stages": [{"name": "rl", "data": [{"path": "synth:sokoban_train_text", "system_prompt": "none"}],
                    "train": {"steps": 1}}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "train", str(path)], capture_output=True, text=True,
                         timeout=900, env=dict(os.environ))
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = [json.loads(x) for x in (out / "0_rl" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/mean" in m for m in metrics)
    ev = json.loads((out / "summary.json").read_text())["stages"][0]["eval"]["sok"]
    full = json.loads((out / "0_rl" / "eval.json").read_text())["sok"]
    assert ev["success_rate"] == ev["accuracy"] == full["accuracy"] and ev["mean_return"] == full["mean_return"]
    assert ev["problems"] == 3
    assert f"return {ev['mean_return']:.3f}" in (out / "report.html").read_text()
