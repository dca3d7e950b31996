"""The variants' rewards (Observe-R1, Vision-R1, Jigsaw-R1) on hand-written completions."""

from __future__ import annotations

import re

import pytest

from lmmr1.rewards.base import RowError, Sample
from lmmr1.rewards.compose import CompositeReward
from lmmr1.rewards.variants import (
    JigsawReward,
    ObserveFormatReward,
    ShortestCorrectBonus,
    StrictAccuracyReward,
    observe_format_ok,
    prompt_groups,
)


def test_format_observe_needs_the_three_blocks_in_order_each_once_and_non_empty():
    good = "<observe>3 red dots</observe>\n<think>count: 3</think> <answer>3</answer>"
    assert observe_format_ok(good) and observe_format_ok("  " + good + "\n")
    for bad in ["<think>3</think><answer>3</answer>",  # no observe block
                "<think>a</think><observe>b</observe><answer>3</answer>",  # out of order
                "<observe> </observe><think>a</think><answer>3</answer>",  # empty observe
                "<observe>a</observe>x<think>a</think><answer>3</answer>",  # text between blocks
                "<observe>a</observe><think>a</think><answer>3</answer><answer>3</answer>",  # twice
                "<observe>a</observe><think>a</think><answer>3</answer> more",  # trailing text
                "x<observe>a</observe><think>a</think><answer>3</answer>"]:  # leading text
        assert not observe_format_ok(bad), bad
    assert ObserveFormatReward()([Sample(good), Sample("<answer>3</answer>")]) == [1.0, 0.0]


def S(completion, answer="3", tokens=None, source="d.jsonl:1"):
    return Sample(completion=completion, answer=answer, completion_tokens=tokens, source=source, prompt="q")


def test_shortest_correct_bonus_goes_to_the_shortest_right_answer_of_each_group():
    r = ShortestCorrectBonus()
    try:
        batch = [S("<think>a</think><answer>3</answer>", tokens=9),  # right, shortest of group 1 (tie)
                 S("<think>abc</think><answer>3</answer>", tokens=12),  # right, longer
                 S("<answer>4</answer>", tokens=3),  # wrong, shorter still: no bonus
                 S("<think>b</think><answer>3</answer>", tokens=9),  # right, ties the shortest
                 S("<answer>5</answer>", answer="5", tokens=20, source="d.jsonl:2"),  # group 2: the only right
                 S("<answer>1</answer>", answer="5", tokens=2, source="d.jsonl:2"),
                 S("<answer>1</answer>", answer="", tokens=2, source="d.jsonl:3")]  # no gold: a row error
        out = r(batch)
    finally:
        r.close()
    assert out[:6] == [0.2, 0.0, 0.0, 0.2, 0.2, 0.0]
    assert isinstance(out[6], RowError)
    assert [list(g) for g in prompt_groups(batch)] == [[0, 1, 2, 3], [4, 5], [6]]


def test_accuracy_strict_is_zero_unless_format_and_answer_are_both_right():
    r = StrictAccuracyReward()
    try:
        out = r([S("<think>x</think><answer>3</answer>"), S("<answer>3</answer>"),
                 S("<think>x</think><answer>4</answer>"), S("<think>x</think><answer>3</answer>", answer="")])
    finally:
        r.close()
    assert out[:3] == [1.0, 0.0, 0.0] and isinstance(out[3], RowError)
    r = StrictAccuracyReward(observe=True)
    try:
        assert r([S("<observe>o</observe><think>x</think><answer>3</answer>"),
                  S("<think>x</think><answer>3</answer>")]) == [1.0, 0.0]
    finally:
        r.close()


def test_jigsaw_scores_the_fraction_of_patches_in_place():
    r = JigsawReward()
    out = r([S("<think>t</think><answer>2 0 1 3</answer>", answer="2 0 1 3"),
             S("<answer>[2, 1, 0, 3]</answer>", answer=[2, 0, 1, 3]),  # positions 0 and 3 right
             S("<answer>2 0 1</answer>", answer="2 0 1 3"),  # wrong length
             S("no answer", answer="2 0 1 3"),
             S("<answer>0 1</answer>", answer="1 1")])  # the gold is no permutation
    assert out[:4] == [1.0, 0.5, 0.0, 0.0]
    assert isinstance(out[4], RowError) and "permutation" in out[4].message


def test_variant_rewards_are_registered_by_name_with_their_default_weights():
    c = CompositeReward(["format_observe", "accuracy_strict", "jigsaw", "shortest_correct_bonus"])
    try:
        assert c.weights == {"format_observe": 0.5, "accuracy_strict": 1.0, "jigsaw": 1.0,
                             "shortest_correct_bonus": 1.0}
        res = c([S("<observe>o</observe><think>t</think><answer>3</answer>", answer="3")])
        # jigsaw: "3" is a permutation only of length... [3] is not 0..0 -> row error, total None
        assert res.total == [None] and "jigsaw" in res.errors[0]
    finally:
        c.close()
    with pytest.raises(Exception, match="unknown reward"):
        CompositeReward(["format_observ"])


def test_ptst_recipe_grows_the_budget_shrinks_n_and_uses_the_hard_reward():
    from pathlib import Path

    from lmmr1.pipeline import load_pipeline, stage_configs

    recipe = Path(__file__).resolve().parent.parent / "recipes/variants/ptst_cpu.yaml"
    stages = stage_configs(load_pipeline(recipe))
    for _, cfg in stages:
        cfg.validate()
    rl = [(name, cfg) for name, cfg in stages if cfg.type == "rl"]
    assert [(c.rollout.max_new_tokens, c.rollout.n) for _, c in rl] == [(64, 8), (128, 4), (256, 2)]
    assert all(c.rollout.max_new_tokens * c.rollout.n == 512 for _, c in rl)  # constant tokens per prompt
    assert all([r.name for r in c.reward] == ["accuracy_strict"] and c.algo.advantage == "grpo" for _, c in rl)
    assert stages[0][1].type == "sft"


def test_jigsaw_suite_tiles_go_back_by_the_answer_and_the_cli_writes_it(tmp_path):
    import json
    import random
    import subprocess
    import sys

    from PIL import ImageChops

    from lmmr1.data.synth import _jigsaw_picture, jigsaw, problems

    p = jigsaw(random.Random(3), rows=2, cols=3)
    perm = [int(x) for x in p.answer.split()]
    assert sorted(perm) == list(range(6)) and perm != list(range(6))
    shown = p.draw(120)
    rebuilt = shown.copy()
    for i, orig in enumerate(perm):  # tile shown at i goes back to position orig
        tile = shown.crop(((i % 3) * 40, (i // 3) * 60, (i % 3 + 1) * 40, (i // 3 + 1) * 60))
        rebuilt.paste(tile, ((orig % 3) * 40, (orig // 3) * 60))
    disc = eval(p.key.split(":", 3)[3])  # the picture's disc, part of the problem's identity
    assert ImageChops.difference(rebuilt, _jigsaw_picture(120, 3, 2, disc)).getbbox() is None
    assert JigsawReward()([Sample(p.response, answer=p.answer)]) == [1.0]  # the worked solution is right
    # the text version gives the same permutation: position = blue level * cols + red level
    levels = [(int(a), int(b)) for a, b in re.findall(r"red level (\d+), blue level (\d+)", p.question)]
    assert [b * 3 + r for r, b in levels] == perm
    assert len(list(problems("jigsaw", "test", 20))) == 20
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "data", "synth", "jigsaw", "--out", str(tmp_path),
                          "--n", "4", "--modality", "image", "--knob", "rows=3", "--knob", "cols=3"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in (tmp_path / "jigsaw_train_image.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["answer"].split()) == 9 for r in rows)
    bad = subprocess.run([sys.executable, "-m", "lmmr1.cli", "data", "synth", "jigsaw", "--out", str(tmp_path),
                          "--knob", "rows=1", "--knob", "cols=1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "2..16 tiles" in bad.stderr + bad.stdout and "Traceback" not in bad.stderr


def test_answer_consistency_reasks_with_shuffled_options_and_needs_both_answers_right():
    from lmmr1.rewards.variants import AnswerConsistencyReward

    choices = ["cat", "dog", "bird"]
    mc = dict(fields={"choices": choices})
    batch = [Sample("<think>it barks</think><answer>B</answer>", answer="B", source="q:1", **mc),  # right
             Sample("<think>it barks</think><answer>dog</answer>", answer="dog", source="q:2", **mc),  # right (text)
             Sample("<think>meow</think><answer>A</answer>", answer="B", source="q:3", **mc),  # wrong: 0, not asked
             Sample("<answer>7</answer>", answer="7", source="q:4"),  # not multiple choice: no opinion
             Sample("<answer>A</answer>", answer="Z", source="q:5", **mc)]  # gold names no option
    seen = []

    def oracle(rows, follow_ups):  # answers with the letter that "dog" has in the new order
        seen.extend(zip(rows, follow_ups, strict=True))
        out = []
        for f in follow_ups:
            listed = f[1]["content"][0]["text"].splitlines()[1:-1]
            out.append(f"<answer>{next(line[0] for line in listed if line.endswith('dog'))}</answer>")
        return out

    r = AnswerConsistencyReward()
    unbound = r(batch[:1])
    assert isinstance(unbound[0], RowError) and "lmmr1 train" in unbound[0].message
    r.bind(oracle)
    out = r(batch)
    assert out[:4] == [1.0, 1.0, 0.0, None] and isinstance(out[4], RowError)
    assert [row for row, _ in seen] == [0, 1]  # only the rows answered right are asked again
    first = seen[0][1]
    assert first[0] == {"role": "assistant", "content": [{"type": "text", "text": "<think>it barks</think>"}]}
    listed = [line[3:] for line in first[1]["content"][0]["text"].splitlines()[1:-1]]
    assert sorted(listed) == sorted(choices) and listed != choices  # the same options, moved
    r.bind(lambda rows, f: ["<answer>B</answer>"] * len(rows))  # copies the first letter: B is no longer dog
    copy = r([batch[0]])
    moved_b = listed[1] != "dog"
    assert copy == [0.0 if moved_b else 1.0]
    assert r.stats()["reasked"] == 3
