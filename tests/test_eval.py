"""`lmmr1 eval`: benchmark layouts (fixtures in their public schemas), metrics, pass@k."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from lmmr1.data.benchmarks import load_benchmark
from lmmr1.data.dataset import DataError
from lmmr1.errors import LmmR1Error
from lmmr1.eval import EvalConfig, evaluate, pass_at_k
from lmmr1.models import load_model


def png_bytes(color=(255, 0, 0)):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def bench_files(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 40), "blue").save(tmp_path / "images" / "1.png")
    # MathVista testmini (parquet, decoded_image as {bytes, path})
    vista = {"pid": ["1", "2"], "question": ["What is the value of x?", "Which is larger?"],
             "image": ["images/1.png", "images/1.png"],
             "decoded_image": [{"bytes": png_bytes(), "path": "1.png"}, {"bytes": png_bytes(), "path": "2.png"}],
             "choices": [None, ["3.5", "4"]], "unit": [None, None], "precision": [None, None],
             "answer": ["7", "4"], "question_type": ["free_form", "multi_choice"],
             "answer_type": ["integer", "text"], "query": ["q1", "q2"]}
    pq.write_table(pa.table(vista), tmp_path / "mathvista_testmini.parquet")
    # MathVerse testmini (json, image paths)
    verse = [{"sample_index": "1", "problem_index": "1", "problem_version": "Text Dominant",
              "question": "Find AB.", "image": "images/1.png", "answer": "B", "question_type": "multi-choice",
              "query_cot": "Find AB. Choices: A:1 B:2", "query_wo": "Find AB."}]
    (tmp_path / "mathverse.json").write_text(json.dumps(verse))
    # MathVision (jsonl with options)
    vision = [{"id": "1", "question": "How many?", "options": ["1", "2", "3"], "image": "images/1.png",
               "answer": "C", "solution": "", "level": 2, "subject": "counting"},
              {"id": "2", "question": "Area?", "options": [], "image": "images/1.png", "answer": "12",
               "solution": "", "level": 1, "subject": "metric geometry"}]
    (tmp_path / "mathvision.jsonl").write_text("\n".join(json.dumps(r) for r in vision))
    # DynaMath (json)
    dyna = [{"id": "1", "question": "What is f(2)?", "image": "images/1.png", "ground_truth": "5",
             "answer_type": "float", "subject": "algebra"}]
    (tmp_path / "dynamath.json").write_text(json.dumps(dyna))
    return tmp_path


def test_benchmark_layouts_are_read(bench_files):
    vista = load_benchmark(bench_files / "mathvista_testmini.parquet", system_prompt="none")
    assert len(vista) == 2 and all(e.has_images for e in vista)
    assert vista[1].fields["choices"] == ["3.5", "4"] and "(B) 4" in vista[1].prompt_text()
    assert vista[0].datasource == "mathvista/free_form" and vista[0].answer == "7"
    assert "mathvista_testmini.parquet (mathvista)" in vista[0].source
    verse = load_benchmark(bench_files / "mathverse.json", system_prompt="none")
    assert verse[0].answer == "B" and "Choices" in verse[0].prompt_text() and verse[0].has_images
    vision = load_benchmark(bench_files / "mathvision.jsonl", system_prompt="none")
    assert vision[0].fields["choices"] == ["1", "2", "3"] and "choices" not in vision[1].fields
    assert vision[0].datasource == "mathvision/level2"
    dyna = load_benchmark(bench_files / "dynamath.json")
    assert dyna[0].answer == "5" and dyna[0].images()[0].size == (40, 40)


def test_unknown_layout_is_a_clear_error(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps({"prompt": "q", "label": "1"}) + "\n")
    with pytest.raises(DataError, match="unknown benchmark layout.*mathvista: pid"):
        load_benchmark(tmp_path / "x.jsonl")


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 3, 2) == 1.0


def test_evaluate_reports_accuracy_format_and_pass_at_k(bench_files, tiny_vlm):
    lm = load_model(tiny_vlm)
    suites = {"vista": load_benchmark(bench_files / "mathvista_testmini.parquet"),
              "dyna": load_benchmark(bench_files / "dynamath.json")}
    res = evaluate(lm, suites, EvalConfig(n=2, temperature=1.0, max_new_tokens=6, samples_per_suite=1))
    for r in res.values():
        assert {"accuracy", "format_rate", "pass@1", "pass@2", "mean_length", "by_datasource", "problems"} <= set(r)
        assert 0.0 <= r["pass@1"] <= r["pass@2"] <= 1.0 and r["samples"] == 2 * r["problems"]
        assert len(r["examples"]) == 1
    assert set(res["vista"]["by_datasource"]) == {"mathvista/free_form", "mathvista/multi_choice"}


def test_cli_eval_writes_json(bench_files, tiny_vlm, tmp_path):
    out = tmp_path / "res.json"
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "eval", "--model", str(tiny_vlm), "--bench",
                          f"vision={bench_files / 'mathvision.jsonl'}", "--max-new-tokens", "4", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["results"]["vision"]["problems"] == 2 and "accuracy" in res.stderr


def test_benchmark_with_relative_path_and_relative_images(bench_files, monkeypatch):
    """Regression: a relative benchmark path (as a pipeline with a relative output_dir gives)."""
    monkeypatch.chdir(bench_files.parent)
    ds = load_benchmark(f"{bench_files.name}/dynamath.json")
    assert ds[0].images()[0].size == (40, 40)
    from lmmr1.data.synth import write_suite

    write_suite(bench_files / "synth", "counting", "test", 3, "image")
    rel = f"{bench_files.name}/synth/counting_test_image.jsonl"
    assert len(load_benchmark(rel)) == 3 and load_benchmark(rel)[0].images()[0].size == (112, 112)


SMOKE_TEXT = __import__("pathlib").Path(__file__).resolve().parent.parent / "recipes" / "data" / "smoke_text.jsonl"


def test_evaluate_seed_progress_and_truncated_fraction(tiny_lm):
    lm = load_model(tiny_lm)
    suites = {"smoke": load_benchmark(SMOKE_TEXT, system_prompt="none", limit=5)}
    calls = []

    def run(seed, max_new_tokens=3):
        cfg = EvalConfig(n=2, temperature=1.0, max_new_tokens=max_new_tokens, batch_size=2, seed=seed,
                         samples_per_suite=10)
        return evaluate(lm, suites, cfg, progress=lambda *a: calls.append(a))["smoke"]

    a, b, c = run(0), run(0), run(7)
    # --seed: the same seed gives the same samples, another seed other samples
    assert [e["completion"] for e in a["examples"]] == [e["completion"] for e in b["examples"]]
    assert [e["completion"] for e in a["examples"]] != [e["completion"] for e in c["examples"]]
    # progress after each batch of 2 prompts: 2, 4, 5 of 5 (three runs)
    assert calls == [("smoke", 2, 5), ("smoke", 4, 5), ("smoke", 5, 5)] * 3
    # truncated = samples that ended at max_new_tokens / all samples (all 10 samples are kept here)
    assert len(a["examples"]) == a["samples"] == 10
    cut = sum(e["finish_reason"] == "length" for e in a["examples"])
    assert a["truncated"] == cut / 10 and cut > 0  # a random tiny model rarely ends within 3 tokens
    assert run(0, max_new_tokens=1)["truncated"] >= a["truncated"]


def test_eval_config_checks_values_and_warns_on_greedy_n():
    assert EvalConfig().max_new_tokens == 2048  # a reasoning trace fits; 256 cut most of them
    assert EvalConfig(n=4, temperature=1.0).check() == []
    (w,) = EvalConfig(n=4, temperature=0.0).check()
    assert w.startswith("4 samples per problem (--n) at temperature 0: greedy samples are identical")
    for kw, msg in [({"n": 0}, "eval n=0: samples per problem must be >= 1"),
                    ({"temperature": -1.0}, "eval temperature=-1.0: must be >= 0"),
                    ({"top_p": 0.0}, r"eval top_p=0.0: must be in \(0, 1\]"),
                    ({"max_new_tokens": 0}, "eval max_new_tokens=0: must be >= 1"),
                    ({"batch_size": 0}, "eval batch_size=0: must be >= 1")]:
        with pytest.raises(LmmR1Error, match=msg):
            EvalConfig(**kw).check()


def test_cli_eval_seed_greedy_n_warning_truncation_and_default_length(tiny_lm, tmp_path):
    out = tmp_path / "res.json"
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "eval", "--model", str(tiny_lm), "--bench",
                          f"smoke={SMOKE_TEXT}", "--limit", "2", "--n", "2", "--max-new-tokens", "2", "--seed", "3",
                          "--system-prompt", "none", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "warning: 2 samples per problem (--n) at temperature 0: greedy samples are identical" in res.stderr
    data = json.loads(out.read_text())
    r = data["results"]["smoke"]
    assert data["config"]["seed"] == 3 and data["config"]["max_new_tokens"] == 2
    assert "truncated" in res.stderr and 0.0 <= r["truncated"] <= 1.0
    assert ("hit --max-new-tokens 2 before ending" in res.stderr) == (r["truncated"] > 0.1)
    helped = subprocess.run([sys.executable, "-m", "lmmr1.cli", "eval", "--help"], capture_output=True, text=True,
                            timeout=120, env={**__import__("os").environ, "COLUMNS": "200"})
    assert "[default: 2048]" in helped.stdout and "--seed" in helped.stdout
