"""``math_lmmr1`` reproduces the LMM-R1 reference verifier; the built-ins differ where documented.

Expected values are derived by hand from the reference's rules (docs/rewards.md, "math_lmmr1"):
total = accuracy + 0.5 x format; format = the cleaned response matches
``<think>…</think><answer>…</answer>`` exactly, each tag once; accuracy = math-verify on the whole
response, ``\\boxed{}`` first, LaTeX-anchored only, gold wrapped in ``$`` and an unparseable gold = 1.
"""

from __future__ import annotations

import pytest

from lmmr1.rewards import Sample, check_rewards
from lmmr1.rewards.builtin import AccuracyReward, FormatReward
from lmmr1.rewards.lmmr1_verifier import LmmR1MathReward, reference_format, reference_gold, reference_response

# (completion, gold, reference total, built-in accuracy, built-in format)
CASES = [
    ("<think>x</think><answer>$\\boxed{5}$</answer>", "5", 1.5, 1.0, 1.0),  # agree
    ("<think>x</think>\n<answer>$\\boxed{5}$</answer>", "5", 1.0, 1.0, 1.0),  # newline between blocks: no format
    ("<think>x</think><answer>5</answer>", "5", 0.5, 1.0, 1.0),  # $-less answer: not extracted
    ("<think>so \\boxed{5}</think><answer>7</answer>", "5", 1.5, 0.0, 1.0),  # untagged boxed counts
    ("<think></think><answer>$5$</answer>", "5", 1.5, 1.0, 0.0),  # empty think passes the format
    ("<think>a</think><answer>$\\boxed{A}$</answer>", "$\\boxed{A}$", 1.5, 1.0, 1.0),  # gold already in $
    ("  <think>a</think><answer>$3$</answer><|im_end|>\n", "3", 1.5, 1.0, 0.0),  # end marker stripped (built-in: text after </answer>)
    ("<think>a<think>b</think><answer>$3$</answer>", "3", 1.0, 1.0, 0.0),  # two <think>: no format
    ("<think>\\boxed{7} then</think><answer>$\\boxed{5}$</answer>", "5", 1.5, 1.0, 1.0),  # the last box wins
]


@pytest.fixture(scope="module")
def ref():
    r = LmmR1MathReward(workers=1)
    yield r
    r.close()


def test_math_lmmr1_scores_like_the_reference_and_the_builtins_differ_where_documented(ref):
    samples = [Sample(completion=c, answer=g) for c, g, *_ in CASES]
    acc = AccuracyReward(workers=1)
    try:
        assert ref(samples) == [c[2] for c in CASES]
        assert acc(samples) == [c[3] for c in CASES]
    finally:
        acc.close()
    assert FormatReward()(samples) == [c[4] for c in CASES]


def test_an_unparseable_gold_scores_one_for_every_completion(ref):
    # "$\text{}$" has nothing math-verify extracts: the reference "skips" the row by rewarding 1
    got = ref([Sample(completion="<think>a</think><answer>$9$</answer>", answer="\\text{}"),
               Sample(completion="no tags at all", answer="\\text{}")])
    assert got == [1.5, 1.0]


def test_format_weight_zero_is_the_reference_without_its_format_reward():
    r = LmmR1MathReward(format_weight=0, workers=1)
    try:
        assert r([Sample(completion=CASES[0][0], answer="5"), Sample(completion=CASES[2][0], answer="5")]) == [1.0, 0.0]
    finally:
        r.close()


def test_helpers_follow_the_reference_rules():
    assert reference_gold("5") == "$5$" and reference_gold("$\\boxed{5}$") == "$\\boxed{5}$"
    assert reference_response(" <think>a</think><answer>b</answer><|endoftext|> ") == "<think>a</think><answer>b</answer>"
    assert reference_format("<think></think><answer></answer>")  # the reference allows empty blocks
    assert not reference_format("<think>a</think> <answer>b</answer>")
    assert not reference_format("<think>a</think><answer>b</answer>.")  # nothing after </answer>


def test_math_lmmr1_by_name_in_a_recipe_and_its_bad_inputs():
    composite = check_rewards([{"name": "math_lmmr1", "kwargs": {"workers": 1}}])
    try:
        res = composite([Sample(completion=CASES[0][0], answer="5"), Sample(completion=CASES[0][0], answer="")])
        assert res.total[0] == 1.5 and res.total[1] is None and isinstance(res.errors[1], str)
    finally:
        composite.close()
    with pytest.raises(ValueError, match="format_weight must be a number >= 0"):
        LmmR1MathReward(format_weight=-1)
