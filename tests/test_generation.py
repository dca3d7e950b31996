"""Forward + generation on mixed batches; sampling log-probs equal teacher-forced log-probs.

The log-prob test is the guard against the silent M-RoPE drift peers hit: if training used
different positions than generation on image rows, the two log-probs would differ (the
negative-control test shows by how much).
"""

from __future__ import annotations

import pytest
import torch

from lmmr1.models import load_model
from lmmr1.models.sequence import completion_logprobs
from lmmr1.rollout import SamplingParams, sample
from lmmr1.rollout.sampler import filter_top_k_top_p
from tests.conftest import user


@pytest.fixture
def mixed(loaded_vlm, images):
    return loaded_vlm.processor(
        [user("How many red circles are there?", images[0]), user("What is 12 + 30? Think first."),
         user("Compare the two pictures.", images[1], images[2]), user("hi")]
    )


def test_prompt_forward_matches_transformers_own_forward(loaded_vlm, mixed):
    """Our explicit 3-D positions and image scatter equal what HF computes itself."""
    lm = loaded_vlm
    with torch.no_grad():
        ref = lm.model(input_ids=mixed.input_ids, attention_mask=mixed.attention_mask,
                       pixel_values=mixed.pixel_values, image_grid_thw=mixed.image_grid_thw,
                       mm_token_type_ids=mixed.mm_token_type_ids).logits
        feats = [f for f in lm.encode_images(mixed) if f is not None]
        hidden, _ = lm.hidden_states(mixed.input_ids, mixed.attention_mask, lm.prompt_positions(mixed),
                                     torch.cat(feats))
        ours = lm.lm_head(hidden)
    valid = mixed.attention_mask.bool()
    assert (ours[valid] - ref[valid]).abs().max().item() < 1e-5


@pytest.mark.parametrize("use_static", [True, False], ids=["static-kv", "hf-cache"])
def test_generation_logprobs_equal_teacher_forced_on_mixed_batch(loaded_vlm, mixed, use_static):
    params = SamplingParams(n=3, max_new_tokens=20, temperature=1.0, seed=7, stop=["e"])
    ro = sample(loaded_vlm, mixed, params, use_static=use_static)
    assert ro.completion_ids.shape == (12, 20)
    assert ro.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    lengths = ro.lengths.tolist()
    assert len(set(lengths)) > 1, "rows should finish at different steps (exercises batch compaction)"
    assert {"stop", "length"} >= set(ro.finish_reasons) and "stop" in ro.finish_reasons
    for r in range(ro.num_rows):  # masks are a prefix; padding after the end
        L = lengths[r]
        assert ro.completion_mask[r, :L].all() and not ro.completion_mask[r, L:].any()
        assert (ro.completion_ids[r, L:] == loaded_vlm.processor.pad_token_id).all()
    with torch.no_grad():
        lp, ent = completion_logprobs(loaded_vlm, ro.prompts, ro.prompt_index, ro.completion_ids,
                                      ro.completion_mask, temperature=1.0, with_entropy=True)
    m = ro.completion_mask > 0
    gap = (lp - ro.logprobs)[m].abs().max().item()
    assert gap < 1e-5, gap
    image_rows = [r for r in range(12) if mixed.images_per_row[int(ro.prompt_index[r])] > 0]
    assert image_rows and (lp - ro.logprobs)[image_rows][m[image_rows]].abs().max() < 1e-5
    assert (ent[m] > 0).all() and (ent[~m] == 0).all()


def test_one_dimensional_positions_would_drift_on_image_rows(loaded_vlm, mixed):
    """Negative control: text-style 1-D positions change image-row log-probs well above 1e-5."""
    lm = loaded_vlm
    ro = sample(lm, mixed, SamplingParams(n=1, max_new_tokens=8, seed=1))
    pos_1d = (mixed.attention_mask.cumsum(-1) - 1).clamp(min=0).unsqueeze(0).expand(3, -1, -1)
    with torch.no_grad():
        lp, _ = completion_logprobs(lm, ro.prompts, ro.prompt_index, ro.completion_ids, ro.completion_mask,
                                    prompt_positions=pos_1d)
    m = ro.completion_mask > 0
    assert (lp - ro.logprobs)[0][m[0]].abs().max() > 1e-4  # row 0 has an image
    assert (lp - ro.logprobs)[1][m[1]].abs().max() < 1e-5  # row 1 is text-only: positions agree


def test_static_and_hf_decoders_sample_the_same_tokens(loaded_vlm, mixed):
    a = sample(loaded_vlm, mixed, SamplingParams(n=2, max_new_tokens=10, seed=11, stop=["e"]), use_static=True)
    b = sample(loaded_vlm, mixed, SamplingParams(n=2, max_new_tokens=10, seed=11, stop=["e"]), use_static=False)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert (a.logprobs - b.logprobs).abs().max() < 1e-5


def test_seeded_sampling_is_reproducible_and_greedy_is_deterministic(loaded_vlm, mixed):
    a = sample(loaded_vlm, mixed, SamplingParams(n=2, max_new_tokens=6, seed=3))
    b = sample(loaded_vlm, mixed, SamplingParams(n=2, max_new_tokens=6, seed=3))
    assert torch.equal(a.completion_ids, b.completion_ids)
    g1 = sample(loaded_vlm, mixed, SamplingParams(n=2, max_new_tokens=6, temperature=0))
    g2 = sample(loaded_vlm, mixed, SamplingParams(n=2, max_new_tokens=6, temperature=0, seed=99))
    assert torch.equal(g1.completion_ids, g2.completion_ids)
    assert torch.equal(g1.completion_ids[0::2], g1.completion_ids[1::2])  # greedy: the n samples agree


def test_vision_placeholder_tokens_are_never_generated(tiny_vlm, images):
    lm = load_model(tiny_vlm)
    pad = lm.image_token_id
    # Make the raw model *prefer* <|image_pad|> at every step.
    lm.lm_head.register_forward_hook(lambda mod, inp, out: out.index_add(
        -1, torch.tensor([pad]), torch.full((*out.shape[:-1], 1), 1e4)))
    batch = lm.processor([user("x", images[0]), user("y")])
    raw = lm.lm_head(torch.zeros(1, lm.lm_head.in_features) + 0.1)
    assert int(raw.argmax()) == pad
    ro = sample(lm, batch, SamplingParams(n=2, max_new_tokens=5, temperature=0))
    for tok in lm.processor.never_generate_ids:
        assert not (ro.completion_ids[ro.completion_mask > 0] == tok).any()


@pytest.mark.parametrize("use_static", [True, False], ids=["static-kv", "hf-cache"])
def test_text_only_model_generation_and_logprobs(tiny_lm, use_static):
    lm = load_model(tiny_lm)
    batch = lm.processor([user("What is 2 + 2?"), user("A much longer prompt that needs left padding here")])
    ro = sample(lm, batch, SamplingParams(n=2, max_new_tokens=12, seed=0, stop=["e"]), use_static=use_static)
    with torch.no_grad():
        lp, _ = completion_logprobs(lm, ro.prompts, ro.prompt_index, ro.completion_ids, ro.completion_mask)
    m = ro.completion_mask > 0
    assert (lp - ro.logprobs)[m].abs().max() < 1e-5
    assert all(isinstance(t, str) for t in ro.texts)


def test_top_k_top_p_filter_hand_example():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_top_k_top_p(logits, 0, 0.8))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    kept = torch.isfinite(filter_top_k_top_p(logits, 0, 0.81))
    assert kept.tolist() == [[True, True, True, False]]
    kept = torch.isfinite(filter_top_k_top_p(logits[:, [2, 0, 3, 1]], 1, 1.0))
    assert kept.tolist() == [[False, True, False, False]]


def test_sampling_params_validate():
    with pytest.raises(ValueError, match="n must be"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


def test_shared_prefix_forward_equals_full_forward_values_and_gradients(tiny_vlm, images):
    """Running each prompt once and fanning its KV cache out to the group is exact, gradients too."""
    results = []
    for shared in (True, False):
        lm = load_model(tiny_vlm)
        batch = lm.processor([user("How many?", images[0]), user("text only row"), user("two", images[1], images[2])])
        ro = sample(lm, batch, SamplingParams(n=3, max_new_tokens=7, seed=5, stop=["e"]))
        rows = torch.tensor([8, 0, 4, 1, 6, 3])  # shuffled rows from all groups, some prompts twice
        lm.model.train()
        lp, _ = completion_logprobs(lm, ro.prompts, ro.prompt_index[rows], ro.completion_ids[rows],
                                    ro.completion_mask[rows], shared_prefix=shared)
        (lp * ro.completion_mask[rows]).sum().backward()
        grads = {n: p.grad.clone() for n, p in lm.model.named_parameters() if p.grad is not None}
        results.append((lp.detach(), grads, ro.logprobs[rows]))
    (lp_s, g_s, ref), (lp_f, g_f, _) = results
    torch.testing.assert_close(lp_s, lp_f, atol=1e-5, rtol=1e-5)
    assert (lp_s - ref).abs().max() < 1e-5
    assert g_s.keys() == g_f.keys() and any("visual" in k for k in g_s)  # the vision tower gets gradients too
    for k in g_s:
        torch.testing.assert_close(g_s[k], g_f[k], atol=1e-5, rtol=1e-4)
