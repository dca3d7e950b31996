"""Advantage estimators for multi-turn episodes: pure tensor functions, one formula each.

A multi-turn rollout becomes one training row per *turn* (the context so far is the row's
prompt, the action tokens of that turn its completion; see ``lmmr1.rollout.episodes``).  The
ordinary estimators assume ``n`` rows per prompt; here a group is the ``n`` episodes started
from the same data row, and each episode contributes as many rows as it took turns.  So these
estimators get a :class:`TurnIndex` saying which episode, group and turn each row is, and the
anchor state the turn acted from (GiGPO).

``scores`` (N,) is the reward of each row's step (the env's reward for that action); the sum of
a row's ``kl_rewards`` is added to it, as the group estimators in ``advantages.py`` do.  Each
returns ``(advantages (N, T), None)``, the row's advantage on every completion token.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from lmmr1.errors import LmmR1Error


@dataclass
class TurnIndex:
    """Where each training row sits in the episodes of a step (all (N,) and row-aligned)."""

    episode: torch.Tensor  # long: episode id (0..E-1)
    group: torch.Tensor  # long: group id; the episodes of a group started from the same data row
    turn: torch.Tensor  # long: 0 for an episode's first action
    anchor: Sequence[Hashable]  # the env state the action was taken from (equal states, equal anchors)

    def __post_init__(self):
        n = self.episode.shape[0]
        if not (self.group.shape[0] == self.turn.shape[0] == len(self.anchor) == n):
            raise LmmR1Error(f"TurnIndex: episode/group/turn/anchor lengths differ "
                             f"({n}, {self.group.shape[0]}, {self.turn.shape[0]}, {len(self.anchor)})")


def _need(turns: TurnIndex | None, name: str) -> TurnIndex:
    if turns is None:
        raise LmmR1Error(f"advantage estimator {name!r} scores multi-turn episodes: set episode.turns >= 1 "
                         "and train on rows with an env field")
    return turns


def _step_rewards(scores: torch.Tensor, kl_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return scores + (kl_rewards * mask).sum(-1)


def _normalise(x: torch.Tensor, keys: list, eps: float, std: bool) -> torch.Tensor:
    """(x - mean_k) / (std_k + eps) within each key (unbiased std; a lone member gets 0)."""
    out = torch.zeros_like(x)
    members: dict = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    for idx in members.values():
        if len(idx) < 2:
            continue
        t = torch.tensor(idx, device=x.device)
        v = x[t]
        a = v - v.mean()
        out[t] = a / (v.std() + eps) if std else a
    return out


def episode_returns(step_rewards: torch.Tensor, turns: TurnIndex) -> torch.Tensor:
    """R_e = sum of the step rewards of episode e, as a (E,) tensor indexed by episode id."""
    n_ep = int(turns.episode.max()) + 1 if turns.episode.numel() else 0
    return torch.zeros(n_ep, dtype=step_rewards.dtype, device=step_rewards.device).index_add_(
        0, turns.episode.to(step_rewards.device), step_rewards)


def discounted_returns(step_rewards: torch.Tensor, turns: TurnIndex, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} along each episode's turns (0 after its last turn), per row."""
    out = torch.zeros_like(step_rewards)
    by_ep: dict[int, list[tuple[int, int]]] = {}
    for i, (e, t) in enumerate(zip(turns.episode.tolist(), turns.turn.tolist(), strict=True)):
        by_ep.setdefault(e, []).append((t, i))
    for rows in by_ep.values():
        running = 0.0
        for _, i in sorted(rows, reverse=True):
            running = float(step_rewards[i]) + gamma * running
            out[i] = running
    return out


def _episode_advantage(r: torch.Tensor, turns: TurnIndex, eps: float) -> torch.Tensor:
    """GRPO over whole episodes: (R_e - mean_g R) / (std_g R + eps), then each row gets its episode's."""
    R = episode_returns(r, turns)
    ep_group: dict[int, int] = {}
    for e, g in zip(turns.episode.tolist(), turns.group.tolist(), strict=True):
        if ep_group.setdefault(e, g) != g:
            raise LmmR1Error(f"TurnIndex: episode {e} has rows in two groups ({ep_group[e]} and {g})")
    keys = [ep_group.get(e, -1 - e) for e in range(R.shape[0])]  # an id with no rows is a group of its own
    return _normalise(R, keys, eps, std=True)[turns.episode.to(R.device)]


def episode_grpo(scores, kl_rewards, mask, group_size=None, *, turns: TurnIndex | None = None,
                 eps: float = 1e-6, **_) -> tuple[torch.Tensor, None]:
    """Trajectory-level GRPO (as RAGEN/VAGEN's episode GRPO): A = (R_e - mean_g R) / (std_g R + eps)
    on every token of every turn of episode e; R_e = sum of e's step rewards; std unbiased."""
    turns = _need(turns, "episode_grpo")
    adv = _episode_advantage(_step_rewards(scores, kl_rewards, mask), turns, eps)
    return adv.reshape(-1, 1) * mask, None


def gigpo(scores, kl_rewards, mask, group_size=None, *, turns: TurnIndex | None = None, gamma: float = 1.0,
          eps: float = 1e-6, omega: float = 1.0, **_) -> tuple[torch.Tensor, None]:
    """GiGPO (Feng et al. 2025, "Group-in-Group Policy Optimization"): A = A_episode + omega * A_step.

    A_episode is :func:`episode_grpo`'s.  Steps are regrouped by *anchor state*: every turn, of any
    episode of the same group, that acted from an identical env state joins one step group; within
    it A_step = (G_t - mean G) / (std G + eps) with G_t = r_t + gamma G_{t+1} the discounted return
    from that step.  A state visited once gives A_step = 0 (nothing to compare against).
    """
    turns = _need(turns, "gigpo")
    r = _step_rewards(scores, kl_rewards, mask)
    a_ep = _episode_advantage(r, turns, eps)
    G = discounted_returns(r, turns, gamma)
    keys = [(g, a) for g, a in zip(turns.group.tolist(), turns.anchor, strict=True)]
    a_step = _normalise(G, keys, eps, std=True)
    return (a_ep + omega * a_step).reshape(-1, 1) * mask, None


def turn_discount(scores, kl_rewards, mask, group_size=None, *, turns: TurnIndex | None = None,
                  gamma: float = 1.0, **_) -> tuple[torch.Tensor, None]:
    """Turn-level discounted REINFORCE with a group baseline per turn index.

    A_{e,t} = G_{e,t} - b_{g,t},  G_{e,t} = sum_{s>=t} gamma^(s-t) r_{e,s},
    b_{g,t} = mean over the episodes e' of group g of G_{e',t}, an episode that had already ended
    by turn t counting G = 0 (nothing more comes to it).  A turn is credited with what came after
    it, discounted, not with the whole episode's return.
    """
    turns = _need(turns, "turn_discount")
    r = _step_rewards(scores, kl_rewards, mask)
    G = discounted_returns(r, turns, gamma)
    eps_in_group: dict[int, set[int]] = {}
    for e, g in zip(turns.episode.tolist(), turns.group.tolist(), strict=True):
        eps_in_group.setdefault(g, set()).add(e)
    sums: dict[tuple[int, int], float] = {}
    for i, (g, t) in enumerate(zip(turns.group.tolist(), turns.turn.tolist(), strict=True)):
        sums[(g, t)] = sums.get((g, t), 0.0) + float(G[i])
    base = torch.tensor([sums[(g, t)] / len(eps_in_group[g])
                         for g, t in zip(turns.group.tolist(), turns.turn.tolist(), strict=True)],
                        dtype=G.dtype, device=G.device)
    return (G - base).reshape(-1, 1) * mask, None
