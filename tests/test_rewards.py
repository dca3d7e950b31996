"""Rule rewards, each rule checked on hand-written cases."""

from __future__ import annotations

import threading
import time

import pytest

from lmmr1.rewards import CompositeReward, RowError, Sample
from lmmr1.rewards.answer import choice_letter, format_ok, last_answer_block, last_boxed, normalize_text
from lmmr1.rewards.base import RewardConfigError, RewardError
from lmmr1.rewards.builtin import AccuracyReward, IoUReward, OverlongPenalty


@pytest.fixture(scope="module")
def acc():
    r = AccuracyReward(timeout=3.0)
    yield r
    r.close()


def A(text):  # a well-formed completion whose answer block holds `text`
    return f"<think>reasoning</think><answer>{text}</answer>"


# (completion, gold, fields, expected accuracy)
CASES = [
    # --- math equivalence through math-verify
    (A("4"), "4", {}, 1.0),
    (A("5"), "4", {}, 0.0),
    (A("\\frac{1}{2}"), "0.5", {}, 1.0),
    (A("0.5"), "\\frac{1}{2}", {}, 1.0),
    (A("1/2"), "\\frac12", {}, 1.0),
    (A("x^2+1"), "1+x^2", {}, 1.0),
    (A("2\\sqrt{2}"), "\\sqrt{8}", {}, 1.0),
    (A("3.50"), "3.5", {}, 1.0),
    (A("10\\%"), "0.1", {}, 1.0),
    (A("\\{1,2\\}"), "\\{2,1\\}", {}, 1.0),
    (A("$6$"), "6", {}, 1.0),
    (A("x = 5"), "5", {}, 1.0),
    (A("\\pi"), "\\pi", {}, 1.0),
    (A("1000"), "1,000", {}, 1.0),
    (A("-3"), "\u22123", {}, 1.0),  # unicode minus in the gold
    (A("\u22127"), "-7", {}, 1.0),  # unicode minus in the prediction
    (A("30"), "30\u00b0", {}, 1.0),  # degree sign dropped
    (A("45^\\circ"), "45", {}, 1.0),
    (A("44"), "45^{\\circ}", {}, 0.0),
    (A("2/3"), "0.6667", {}, 0.0),
    # --- \boxed{} inside the answer wins; the last one counts
    (A("so \\boxed{7}"), "7", {}, 1.0),
    (A("\\boxed{3} no wait \\boxed{8}"), "8", {}, 1.0),
    (A("\\boxed{\\frac{3}{4}}"), "0.75", {}, 1.0),
    # --- only the LAST answer block counts; a boxed value in the thinking never does
    ("<think>\\boxed{9}</think><answer>4</answer>", "9", {}, 0.0),
    ("<think>x</think><answer>9</answer><answer>4</answer>", "4", {}, 1.0),
    ("<think>x</think><answer>4</answer><answer>9</answer>", "4", {}, 0.0),
    ("<think>the answer is 4</think>", "4", {}, 0.0),  # no answer block
    ("4", "4", {}, 0.0),
    ("<think>x</think><answer></answer>", "4", {}, 0.0),
    ("<think>x</think><answer>4", "4", {}, 0.0),  # unclosed block
    # --- multiple choice by letter
    (A("B"), "B", {}, 1.0),
    (A("(B)"), "B", {}, 1.0),
    (A("B."), "B", {}, 1.0),
    (A("B)"), "B", {}, 1.0),
    (A("B:"), "B", {}, 1.0),
    (A("(B) 12 apples"), "B", {}, 1.0),
    (A("B. twelve"), "B", {}, 1.0),
    (A("\\boxed{B}"), "B", {}, 1.0),
    (A("C"), "B", {}, 0.0),
    (A("(C) 12"), "(B)", {}, 0.0),
    (A("b"), "B", {}, 0.0),  # lowercase is not a letter answer without choices
    # --- with choices: letters, option values, or gold given as the option value
    (A("b"), "B", {"choices": ["3", "4", "5"]}, 1.0),
    (A("4"), "B", {"choices": ["3", "4", "5"]}, 1.0),
    (A("A"), "4", {"choices": ["3", "4", "5"]}, 0.0),
    (A("B"), "4", {"choices": ["3", "4", "5"]}, 1.0),
    (A("4.0"), "4", {"choices": ["3", "4", "5"]}, 1.0),
    (A("(A) 3"), "A", {"choices": '["3", "4", "5"]'}, 1.0),  # choices as a JSON string
    # --- non-math text golds: normalised comparison
    (A("Yes"), "yes", {}, 1.0),
    (A("yes."), "Yes", {}, 1.0),
    (A("  Triangle  "), "triangle", {}, 1.0),
    (A("\\text{square}"), "square", {}, 1.0),
    (A("no"), "yes", {}, 0.0),
    (A("north east"), "North  East", {}, 1.0),
    (A("rectangle"), "square", {}, 0.0),
    (A("Paris!"), "paris", {"answer_type": "text"}, 1.0),
]


@pytest.mark.parametrize("completion, gold, fields, expected", CASES)
def test_accuracy_cases(acc, completion, gold, fields, expected):
    assert acc([Sample(completion, gold, fields=fields)]) == [expected]


def test_there_are_at_least_40_accuracy_cases():
    assert len(CASES) >= 40


def test_accuracy_batch_equals_one_by_one(acc):
    samples = [Sample(c, g, fields=f) for c, g, f, _ in CASES]
    assert acc(samples) == [e for *_, e in CASES]


@pytest.mark.parametrize("gold", ["", "   ", None, []])
def test_empty_gold_is_an_error_row_never_a_score(acc, gold):
    (v,) = acc([Sample(A("4"), gold)])
    assert isinstance(v, RowError) and "empty gold" in v.message


def test_fallback_to_completion_switch():
    r = AccuracyReward(fallback_to_completion=True)
    try:
        assert r([Sample("The result is \\boxed{12}", "12"), Sample("no box, it is 5", "5")]) == [1.0, 1.0]
        assert r([Sample("<think>x</think><answer>3</answer>", "12")]) == [0.0]  # a block still wins
    finally:
        r.close()


def test_pathological_answer_times_out_from_a_thread():
    r = AccuracyReward(timeout=2.0)
    out = {}

    def work():
        t0 = time.monotonic()
        out["v"] = r([Sample(A("9^{9^{9^{9^{9}}}}"), "2"), Sample(A("3"), "3")])
        out["dt"] = time.monotonic() - t0

    try:
        th = threading.Thread(target=work)
        th.start()
        th.join(timeout=30)
        assert not th.is_alive()
        assert out["v"] == [0.0, 1.0]
        assert out["dt"] < 2.0 + 5.0  # the hard timeout plus worker start-up, never unbounded
        assert r.stats()["timeouts"] == 1
        assert r([Sample(A("5"), "5")]) == [1.0]  # the pool recovered (worker replaced)
    finally:
        r.close()


# ------------------------------------------------------------------ format
@pytest.mark.parametrize(
    "text, ok",
    [
        ("<think>a</think><answer>b</answer>", True),
        ("<think>a\nb</think>\n\n<answer> 4 </answer>\n", True),
        ("  <think>a</think> <answer>b</answer>  ", True),
        ("<think>a</think><answer>b</answer> trailing", False),
        ("prefix <think>a</think><answer>b</answer>", False),
        ("<answer>b</answer><think>a</think>", False),
        ("<think>a</think>", False),
        ("<answer>b</answer>", False),
        ("<think>a</think><think>c</think><answer>b</answer>", False),
        ("<think>a</think><answer>b</answer><answer>c</answer>", False),
        ("<think>a<think>x</think><answer>b</answer>", False),
        ("<think>a</think><answer>b<answer>c</answer>", False),
        ("<think><answer>b</answer></think>", False),
        ("<think> </think><answer>b</answer>", False),
        ("<think>a</think><answer>  </answer>", False),
        ("<think>a</think>middle<answer>b</answer>", False),
        ("<think>a</think><answer>b", False),
    ],
)
def test_format_rule(text, ok):
    assert format_ok(text) is ok


# ------------------------------------------------------------------ parsing helpers
def test_answer_block_boxed_and_letters():
    assert last_answer_block("<answer>1</answer> x <answer> 2 </answer>") == "2"
    assert last_answer_block("<answer>1") is None
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} \\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{unbalanced") is None
    for s in ["B", "(B)", "B.", "B)", "B:", "(B) text", "B. text", "\\boxed{B}", "$B$"]:
        assert choice_letter(s) == "B", s
    for s in ["Bob", "B2", "12", "", "(B"]:
        assert choice_letter(s) is None, s
    assert normalize_text("  \\text{Yes}. ") == "yes"


# ------------------------------------------------------------------ iou / overlong
def test_iou_reward():
    r = IoUReward()
    gold = [0, 0, 10, 10]
    out = r([
        Sample(A("[0, 0, 10, 10]"), gold),
        Sample(A("[5,0,15,10]"), gold),  # half overlap: 50 / 150
        Sample(A("[20, 20, 30, 30]"), gold),
        Sample(A("[10, 10, 0, 0]"), gold),  # malformed (x2 < x1)
        Sample(A("[1, 2, 3]"), gold),  # malformed (3 numbers)
        Sample(A("[0,0,10,10]"), "[0, 0, 10, 10]"),  # gold as a string
        Sample(A("[0,0,10,10]"), "not a box"),
    ])
    assert out[:3] == [1.0, pytest.approx(1 / 3), 0.0]
    assert out[3:6] == [0.0, 0.0, 1.0]
    assert isinstance(out[6], RowError)
    assert IoUReward(threshold=0.5)([Sample(A("[5,0,15,10]"), gold), Sample(A("[1,0,11,10]"), gold)]) == [0.0, 1.0]


def test_overlong_penalty_dapo():
    r = OverlongPenalty(max_tokens=100, buffer=20)
    out = r([Sample("x", "1", completion_tokens=n) for n in (50, 80, 90, 100, 130)])
    assert out == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert isinstance(r([Sample("x", "1")])[0], RowError)
    with pytest.raises(ValueError):
        OverlongPenalty(max_tokens=10, buffer=20)


# ------------------------------------------------------------------ composition + custom
def test_composition_default_weights_and_components():
    c = CompositeReward(["accuracy", "format"])
    try:
        assert c.weights == {"accuracy": 1.0, "format": 0.5}  # LMM-R1 default
        res = c([Sample(A("4"), "4"), Sample("<answer>4</answer>", "4"), Sample(A("4"), "")])
        assert res.total == [1.5, 1.0, None]
        assert res.components["format"] == [1.0, 0.0, 1.0]
        assert res.components["accuracy"] == [1.0, 1.0, None]
        assert res.errors[2].startswith("accuracy: empty gold") and res.num_errors == 1
    finally:
        c.close()


def test_unknown_reward_suggests_the_closest(tmp_path):
    with pytest.raises(RewardConfigError, match="did you mean 'format'"):
        CompositeReward(["fromat"])
    with pytest.raises(RewardConfigError, match="unknown reward spec key"):
        CompositeReward([{"name": "format", "wieght": 2}])


def test_custom_rewards_in_three_shapes(tmp_path):
    f = tmp_path / "my_rewards.py"
    f.write_text(
        "def native(samples):\n    return [float(len(s.completion)) for s in samples]\n"
        "def reward_func(queries, prompts, labels):\n"
        "    return [1.0 if q.startswith(p) and q.endswith(l) else 0.0 for q, p, l in zip(queries, prompts, labels)]\n"
        "def trl_style(prompts, completions, answer, **kwargs):\n"
        "    return [1.0 if a in c else None for c, a in zip(completions, answer)]\n"
        "def short(samples):\n    return [1.0]\n"
    )
    samples = [Sample("hello 42", "42", prompt="Q: "), Sample("nothing", "7", prompt="Q: ")]
    c = CompositeReward([{"path": str(f), "name": "native", "weight": 0.1},
                         {"path": str(f), "name": "reward_func"}, {"path": str(f), "name": "trl_style"}])
    res = c(samples)
    assert res.components == {"native": [8.0, 7.0], "reward_func": [1.0, 0.0], "trl_style": [1.0, None]}
    assert res.total == [pytest.approx(0.8 + 1 + 1), pytest.approx(0.7)]
    with pytest.raises(RewardError, match="returned 1 values for 2 samples"):
        CompositeReward([{"path": str(f), "name": "short"}])(samples)
    with pytest.raises(RewardConfigError, match="has no function 'nope'"):
        CompositeReward([{"path": str(f), "name": "nope"}])


def test_custom_reward_shapes_as_other_frameworks_pass_them(tmp_path):
    """OpenRLHF dict return; LMM-R1 queries built on the chat-templated prompt; TRL conversational
    completions and every dataset column under its own name; options from the spec's kwargs."""
    f = tmp_path / "shapes.py"
    f.write_text(
        "import torch\n"
        "def openrlhf(queries, prompts, labels):\n"
        "    r = torch.tensor([float(q.startswith('<|im_start|>') and q.endswith(l)) for q, l in zip(queries, labels)])\n"
        "    return {'rewards': r, 'scores': r, 'extra_logs': {'x': r}}\n"
        "def trl_conv(prompts, completions, solution, answer, **kwargs):\n"
        "    return [float(p[-1]['role'] == 'user' and c[0]['role'] == 'assistant' and c[0]['content'].endswith(s)\n"
        "                  and a == s and d == 'geo')\n"
        "            for p, c, s, a, d in zip(prompts, completions, solution, answer, kwargs['datasource'])]\n"
        "def scaled(samples, scale=1.0):\n"
        "    return [scale * len(s.completion) for s in samples]\n"
    )
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"}]
    chat = "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    good = Sample("so 2", "2", prompt="1+1?", fields={"datasource": "geo"}, chat_prompt=chat, messages=msgs,
                  columns={"solution": "2"})
    bad = Sample("so 3", "2", prompt="1+1?", fields={"datasource": "geo"}, chat_prompt=chat, messages=msgs,
                 columns={"solution": "2"})
    c = CompositeReward([{"path": str(f), "name": "openrlhf"}, {"path": str(f), "name": "trl_conv"},
                         {"path": str(f), "name": "scaled", "kwargs": {"scale": 0.5}}])
    c.check()  # the synthetic check sample satisfies all three (trl_conv's 'solution' gets the answer)
    res = c([good, bad])
    assert res.components == {"openrlhf": [1.0, 0.0], "trl_conv": [1.0, 0.0], "scaled": [2.0, 2.0]}
    # without a chat template the LMM-R1 query falls back to the plain prompt text
    plain = CompositeReward([{"path": str(f), "name": "openrlhf"}])
    assert plain([Sample("so 2", "2", prompt="1+1?")]).components["openrlhf"] == [0.0]


def test_trl_standard_format_when_the_prompt_is_text(tmp_path):
    f = tmp_path / "std.py"
    f.write_text("def f(prompts, completions, **kw):\n"
                 "    return [float(isinstance(p, str) and isinstance(c, str)) for p, c in zip(prompts, completions)]\n")
    c = CompositeReward([{"path": str(f), "name": "f"}])
    assert c([Sample("x", "1", prompt="q")]).components["f"] == [1.0]
