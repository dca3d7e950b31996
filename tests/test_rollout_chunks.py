"""Bounded rollout: chunked decoding samples exactly what one unchunked pass samples.

Rows are seeded one by one (seed, prompt index, sample index, position), so neither the chunk
size nor which process decodes a prompt changes a token; this is what lets rollout workers
split a batch and still equal one process (tests/test_distributed.py).
"""

from __future__ import annotations

import pytest
import torch

from lmmr1.models.processor import select_prompts
from lmmr1.rollout import SamplingParams, sample
from lmmr1.rollout.sampler import row_keys, rows_per_chunk, splitmix64, uniform_noise
from lmmr1.rollout.types import concat_rollouts
from tests.conftest import user


@pytest.fixture
def mixed(loaded_vlm, images):
    return loaded_vlm.processor(
        [user("How many red circles are there?", images[0]), user("What is 12 + 30? Think first."),
         user("Compare the two pictures.", images[1], images[2]), user("hi")]
    )


def test_splitmix64_matches_the_published_reference_values():
    # splitmix64 finaliser of the first three states of the sequence seeded with 0 (x += golden each
    # call), as printed by the reference C implementation (Vigna): e220a8397b1dcdaf, 6e789e6aa1b965f4, ...
    golden = 0x9E3779B97F4A7C15
    assert splitmix64(golden) == 0xE220A8397B1DCDAF
    assert splitmix64(2 * golden) == 0x6E789E6AA1B965F4


def test_tensor_noise_is_the_python_hash_and_depends_only_on_its_row():
    keys = row_keys(123, [0, 5], 2)
    assert len(set(keys)) == 4
    u = uniform_noise(torch.tensor(keys), t=3, vocab=7)
    # element (row, v) is the top 23 bits of splitmix64(key + (t*vocab + v) * golden), centred in its bin
    for r, key in enumerate(keys):
        for v in range(7):
            x = splitmix64(key + (3 * 7 + v) * 0x9E3779B97F4A7C15)
            assert u[r, v].item() == ((x >> 41) + 0.5) / 2**23
    assert torch.equal(uniform_noise(torch.tensor(keys[2:3]), 3, 7)[0], u[2])  # alone = in a batch
    assert 0 < float(u.min()) and float(u.max()) < 1


def test_rows_per_chunk_follows_both_budgets():
    p = SamplingParams(n=4, max_new_tokens=10, max_rows_in_flight=6)
    assert rows_per_chunk(p, 16, prompt_len=20) == 6
    p = SamplingParams(n=4, max_new_tokens=10, max_tokens_in_flight=100)
    assert rows_per_chunk(p, 16, prompt_len=20) == 3  # 100 // (20 + 10)
    p = SamplingParams(n=4, max_new_tokens=10, max_rows_in_flight=2, max_tokens_in_flight=1000)
    assert rows_per_chunk(p, 16, prompt_len=20) == 2
    assert rows_per_chunk(SamplingParams(n=4, max_new_tokens=10, max_tokens_in_flight=5), 16, 20) == 1
    assert rows_per_chunk(SamplingParams(n=4), 16, 20) == 16
    with pytest.raises(ValueError, match="max_rows_in_flight"):
        SamplingParams(max_rows_in_flight=-1)


@pytest.mark.parametrize("budget", [dict(max_rows_in_flight=3), dict(max_rows_in_flight=1),
                                    dict(max_tokens_in_flight=200)])
def test_chunked_rollout_samples_exactly_the_unchunked_tokens(loaded_vlm, mixed, budget):
    """Chunks of 3 rows cut GRPO groups (n=3... n=4) in the middle: a group's rows are decoded in
    two chunks, with its prompt prefilled in each."""
    base = dict(n=4, max_new_tokens=10, seed=7, stop=["e"])
    whole = sample(loaded_vlm, mixed, SamplingParams(**base))
    chunked = sample(loaded_vlm, mixed, SamplingParams(**base, **budget))
    assert torch.equal(whole.completion_ids, chunked.completion_ids)
    assert torch.equal(whole.completion_mask, chunked.completion_mask)
    assert whole.finish_reasons == chunked.finish_reasons and whole.texts == chunked.texts
    assert (whole.logprobs - chunked.logprobs).abs().max() < 1e-5
    assert len(set(whole.texts)) > 4  # real sampling: the rows differ


def test_a_worker_given_some_prompts_and_their_ids_samples_what_one_process_does(loaded_vlm, mixed):
    params = SamplingParams(n=3, max_new_tokens=8, seed=11)
    whole = sample(loaded_vlm, mixed, params)
    parts = [sample(loaded_vlm, select_prompts(mixed, ids), params, prompt_ids=ids) for ids in ([0, 1], [2, 3])]
    joined = concat_rollouts(parts, loaded_vlm.processor.pad_token_id)
    assert torch.equal(joined.completion_ids, whole.completion_ids)
    # without its global prompt ids the second worker would sample other tokens
    wrong = sample(loaded_vlm, select_prompts(mixed, [2, 3]), params)
    assert not torch.equal(wrong.completion_ids, whole.completion_ids[6:])
