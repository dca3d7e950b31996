"""Memory-exact token log-probs: per-chunk recomputation keeps no full-vocabulary tensor for
backward, with the gradients of the plain computation; no entropy graph when it is only a metric."""

from __future__ import annotations

import pytest
import torch


def plain(lm, hidden, targets, temp):
    """The textbook computation: one full log-softmax over every position, kept for backward."""
    logp = torch.log_softmax(lm.logits(hidden) / temp, dim=-1)
    ent = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), ent


def grads(lm, hidden, fn):
    weight = lm.lm_head.weight
    weight.grad = None
    h = hidden.clone().requires_grad_(True)
    lp, ent = fn(h)
    a = torch.linspace(-1, 1, lp.numel())
    loss = (a * lp).sum() + (0.3 * a.flip(0) * ent).sum() if ent is not None and ent.requires_grad else (a * lp).sum()
    loss.backward()
    return lp.detach(), (ent.detach() if ent is not None else None), h.grad.clone(), weight.grad.clone()


@pytest.fixture
def setup(loaded_vlm):
    torch.manual_seed(0)
    n, hdim = 37, loaded_vlm.lm_head.weight.shape[1]
    hidden = torch.randn(n, hdim)
    vocab = loaded_vlm.lm_head.weight.shape[0]
    allowed = [i for i in range(vocab) if i not in set(loaded_vlm.suppress_ids or [])]
    targets = torch.tensor(allowed)[torch.randint(0, len(allowed), (n,))]
    return loaded_vlm, hidden, targets


def test_recomputed_chunks_give_the_plain_gradients_in_fp32(setup):
    lm, hidden, targets = setup
    want = grads(lm, hidden, lambda h: plain(lm, h, targets, 0.7))
    got = grads(lm, hidden, lambda h: lm.token_logprobs(h, targets, 0.7, chunk_tokens=8, with_entropy=True))
    for w, g in zip(want, got, strict=True):  # log-probs, entropies, d/d hidden, d/d lm_head
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
    assert got[2].abs().sum() > 0 and got[3].abs().sum() > 0  # gradients really flowed


def test_no_entropy_graph_when_entropy_is_only_a_metric(setup):
    lm, hidden, targets = setup
    h = hidden.clone().requires_grad_(True)
    lp, ent = lm.token_logprobs(h, targets, 1.0, chunk_tokens=8, with_entropy=True, entropy_grad=False)
    assert lp.requires_grad and not ent.requires_grad
    want = grads(lm, hidden, lambda x: (plain(lm, x, targets, 1.0)[0], None))
    got = grads(lm, hidden, lambda x: (lm.token_logprobs(x, targets, 1.0, chunk_tokens=8)[0], None))
    for w, g in zip((want[0], want[2], want[3]), (got[0], got[2], got[3]), strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent, plain(lm, hidden, targets, 1.0)[1], atol=1e-6, rtol=1e-6)


def saved_bytes(fn, *inputs: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``fn`` runs, not counting
    the ``inputs`` (hidden states, lm_head weight), which exist anyway."""
    seen: dict[int, int] = {}
    skip = {t.untyped_storage().data_ptr() for t in inputs}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_backward_keeps_no_full_vocabulary_tensor(setup):
    lm, hidden, targets = setup
    h = hidden.clone().requires_grad_(True)
    one_logits = hidden.shape[0] * lm.lm_head.weight.shape[0] * 4  # N x V fp32
    w = lm.lm_head.weight
    kept = saved_bytes(lambda: lm.token_logprobs(h, targets, chunk_tokens=8, with_entropy=True, recompute=False), h, w)
    kept_no_ent = saved_bytes(lambda: lm.token_logprobs(h, targets, chunk_tokens=8, with_entropy=True,
                                                        entropy_grad=False, recompute=False), h, w)
    exact = saved_bytes(lambda: lm.token_logprobs(h, targets, chunk_tokens=8, with_entropy=True), h, w)
    # kept: the log-softmax of every chunk (N x V), plus exp and nan_to_num copies for the entropy graph
    assert kept >= 3 * one_logits and one_logits <= kept_no_ent < 2 * one_logits
    assert exact < 8 * lm.lm_head.weight.shape[0] * 4  # less than one chunk's logits
