"""Multi-turn episodes: play env rows turn by turn and hand the trainer one row per turn.

Why one row per turn (as verl-agent/GiGPO do) rather than one long sequence per episode: a later
observation may carry images, and a turn row keeps every image in the *prompt* part, where the
existing sampler and the teacher-forced forward (``models.sequence``) already place image
features and M-RoPE positions.  The loss then covers exactly the action tokens: observation
tokens are context (masked out of the loss by construction), and the trainer's step is
unchanged.

The rules the module keeps (each tested in tests/test_episodes.py):

- **token ids pass through untouched.**  A turn's context is the concatenation of the ids of
  the first prompt, then per earlier turn the *sampled* action ids and the observation ids,
  each tokenised once when it arrived.  History is never decoded and re-tokenised (that changes
  ids at the boundaries and the importance ratios with them).
- **each observation's images are expanded once**: an observation's pixels are processed and
  its ``<|image_pad|>`` run inserted when it arrives; later contexts reuse both.
- **budgets with truncation flags**: ``rollout.max_new_tokens`` per turn (finish reason
  ``length``), ``episode.max_episode_tokens`` over an episode's actions, ``episode.max_images``
  and ``episode.max_context_tokens`` over a context, ``episode.turns`` turns; an episode that
  hits one ends with ``truncated`` naming it.
- **context**: ``full`` history; ``last_k`` (the first prompt, which states the task, plus
  the last k turns); or ``current`` (Markov: the latest observation alone, written as a fresh
  conversation the way a first prompt is, so each turn reads like a single-turn row).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lmmr1.algos.episodes import TurnIndex
from lmmr1.envs.base import Env, make_env
from lmmr1.errors import LmmR1Error
from lmmr1.models.processor import PromptBatch
from lmmr1.rollout.sampler import sample
from lmmr1.rollout.types import Rollout, SamplingParams, concat_rollouts

if TYPE_CHECKING:
    from lmmr1.models.loader import LoadedModel
    from lmmr1.trainer.config import EpisodeConfig

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def action_text(completion: str) -> str:
    """The action a completion names: the last ``<answer>...</answer>`` if there is one, else the
    whole text.  The env decides whether it is a valid action (no loose parsing here: paying
    for a half-parsed action collapses rollouts onto one repeated move)."""
    found = ANSWER_RE.findall(completion)
    return (found[-1] if found else completion).strip()


@dataclass
class Segment:
    """A piece of an episode's token trace: the first prompt, one action, or one observation."""

    ids: list[int]
    is_action: bool = False
    pixel_values: torch.Tensor | None = None  # this segment's images, processed once
    grid: torch.Tensor | None = None  # (n_images, 3)

    @property
    def n_images(self) -> int:
        return 0 if self.grid is None else int(self.grid.shape[0])


@dataclass
class Episode:
    group: int  # the data row it plays (its n episodes share it)
    env: Env
    first: Segment
    turns: list[tuple[Segment, Segment | None]] = field(default_factory=list)  # (action, next observation)
    generated: int = 0  # action tokens so far
    rewards: list[float] = field(default_factory=list)
    done: bool = False
    success: bool = False
    truncated: str | None = None  # turns | episode_tokens | images | context, or None
    current: Segment | None = None  # context "current": the latest observation as a fresh conversation

    @property
    def ret(self) -> float:
        return sum(self.rewards)

    def context(self, mode: str, last_k: int) -> list[Segment]:
        """The segments the next action is conditioned on."""
        if mode == "current":
            return [self.current or self.first]
        kept = self.turns if mode == "full" else self.turns[len(self.turns) - last_k:] if last_k else []
        out = [self.first]
        for act, obs in kept:
            out.append(act)
            if obs is not None:
                out.append(obs)
        return out

    def trace(self) -> tuple[list[int], list[int]]:
        """(all ids of the episode, 1 on action tokens / 0 on prompt and observation tokens)."""
        ids, mask = list(self.first.ids), [0] * len(self.first.ids)
        for act, obs in self.turns:
            ids += act.ids
            mask += [1] * len(act.ids)
            if obs is not None:
                ids += obs.ids
                mask += [0] * len(obs.ids)
        return ids, mask


@dataclass
class EpisodeBatch:
    """One rollout of episodes: turn rows for the trainer, and the episodes themselves."""

    rollout: Rollout  # one row per turn; rollout.turns is the TurnIndex
    step_rewards: list[float]  # per row: the env reward of that turn's action (+ invalid_reward)
    row_episode: list[int]
    episodes: list[Episode]
    valid: list[bool]  # per row: the env accepted the action

    def samples_and_rewards(self, examples: list):
        """What the trainer's metrics and sample log read: one Sample per turn row, and a
        RewardResult whose total is the step reward (the estimators' input)."""
        from lmmr1.rewards import RewardResult, Sample

        ro = self.rollout
        lengths = ro.lengths.tolist()
        samples, ret, succ = [], [], []
        for r, e in enumerate(self.row_episode):
            ep = self.episodes[e]
            ex = examples[ep.group]
            samples.append(Sample(completion=ro.texts[r], answer=ex.answer, prompt=ex.prompt_text(),
                                  fields={**ex.fields, "datasource": ex.datasource}, completion_tokens=lengths[r],
                                  chat_prompt=ro.prompts.texts[int(ro.prompt_index[r])], messages=ex.messages,
                                  source=ex.source))
            ret.append(ep.ret)
            succ.append(float(ep.success))
        res = RewardResult(total=list(self.step_rewards),
                           components={"env_step": list(self.step_rewards), "episode_return": ret,
                                       "episode_success": succ},
                           errors=[None] * len(self.step_rewards))
        return samples, res

    def stats(self) -> dict[str, float]:
        eps = self.episodes
        n = max(1, len(eps))
        out = {
            "episode/success": sum(e.success for e in eps) / n,
            "episode/return": sum(e.ret for e in eps) / n,
            "episode/turns": sum(len(e.turns) for e in eps) / n,
            "episode/valid_frac": sum(self.valid) / max(1, len(self.valid)),
            "episode/truncated_frac": sum(e.truncated is not None for e in eps) / n,
        }
        for why in ("turns", "episode_tokens", "images", "context"):
            out[f"episode/truncated/{why}"] = sum(e.truncated == why for e in eps) / n
        return out


class ObservationEncoder:
    """Chat-template pieces for later turns, derived from the processor's own template.

    The text that closes an assistant turn and opens a user turn with an observation is found
    by rendering a two-message conversation with and without a third (user) message and taking
    the difference, so any ChatML-like template works, not only Qwen's."""

    def __init__(self, processor):
        self.proc = processor
        base = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
        self.base_text = processor.render(base, add_generation_prompt=False)
        self.base = base
        cut = self.base_text.rindex("A") + 1
        self.turn_end = self.base_text[cut:]  # e.g. "<|im_end|>\n"

    def segment(self, obs_text: str, images: list, after_action: Segment, finish: str, name: str) -> Segment:
        """Ids of: the rest of the closing of the action's turn, then a user turn holding the
        observation (images first, then text), then the generation prompt."""
        content: list[dict[str, Any]] = [{"type": "image"} for _ in images] + [{"type": "text", "text": obs_text}]
        full = self.proc.render(self.base + [{"role": "user", "content": content}], add_generation_prompt=True)
        if not full.startswith(self.base_text):
            raise LmmR1Error("the chat template renders an earlier conversation differently once a turn is added; "
                             "multi-turn episodes need a template whose history is a prefix of the next prompt")
        close = self.turn_end
        if finish == "stop" and after_action.ids:
            last = self.proc.tokenizer.decode([after_action.ids[-1]], skip_special_tokens=False)
            if last and close.startswith(last):
                close = close[len(last):]  # the action already ended with the turn's end token
        text = close + full[len(self.base_text):]
        pixel_values = grid = None
        if images:
            pixel_values, grid = self.proc.process_images(images)
        ids = self.proc.tokenize_segment(text, grid, len(images), name)
        return Segment(ids, False, pixel_values, grid)


def _first_segments(processor, examples: list, images: list[list]) -> list[Segment]:
    out = []
    for ex, imgs in zip(examples, images, strict=True):
        pb = processor([ex.messages], images=[imgs], row_names=[ex.source])
        out.append(Segment(pb.input_ids[0].tolist(), False, pb.pixel_values, pb.image_grid_thw))
    return out


def contexts_batch(processor, contexts: list[list[Segment]]) -> PromptBatch:
    """A left-padded prompt batch from segment lists (ids concatenated, images in order)."""
    rows, pix, grids, per_row, texts = [], [], [], [], []
    for segs in contexts:
        ids = [t for s in segs for t in s.ids]
        rows.append(ids)
        n_img = 0
        for s in segs:
            if s.grid is not None:
                pix.append(s.pixel_values)
                grids.append(s.grid)
                n_img += s.n_images
        per_row.append(n_img)
        texts.append(processor.decode(ids, skip_special_tokens=False))
    return processor.batch_from_ids(rows, torch.cat(pix) if pix else None, torch.cat(grids) if grids else None,
                                    per_row, texts)


def _env_seed(spec: dict, fallback: int) -> int:
    s = spec.get("seed")
    return int(s) if isinstance(s, int) and not isinstance(s, bool) else fallback


def _ids_of(ro: Rollout, r: int) -> list[int]:
    return ro.completion_ids[r, : int(ro.completion_mask[r].sum())].tolist()


def _cut(ro: Rollout, r: int, keep: int, pad_id: int) -> None:
    """Keep only the first ``keep`` tokens of row r (an episode token budget ran out)."""
    ro.completion_mask[r, keep:] = 0.0
    ro.completion_ids[r, keep:] = pad_id
    ro.logprobs[r, keep:] = 0.0
    ro.finish_reasons[r] = "length"


Sampler = Callable[[PromptBatch, SamplingParams], Rollout]


@torch.no_grad()
def play_episodes(lm: LoadedModel, examples: list, images: list[list], cfg: EpisodeConfig,
                  params: SamplingParams, sampler: Sampler | None = None) -> EpisodeBatch:
    """Play ``params.n`` episodes of each env row in ``examples``; one rollout row per turn.

    Turn 0 samples the n actions of a group from its shared first prompt in one prefill (as a
    single-turn rollout does); later turns sample one action per live episode from its context.
    Seeds per turn derive from ``params.seed`` so a step is reproducible.  ``sampler`` generates
    the actions of a turn (default: ``lm`` in this process); the trainer passes its executor's,
    so distributed runs play every turn on the rollout workers while the envs, the token traces
    and the turn rows stay here (rows are seeded by their index, so the tokens do not depend on
    which worker sampled them).
    """
    proc = lm.processor
    sampler = sampler or (lambda prompts, p: sample(lm, prompts, p))
    enc = ObservationEncoder(proc)
    n = params.n
    firsts = _first_segments(proc, examples, images)
    episodes: list[Episode] = []
    for g, ex in enumerate(examples):
        spec = ex.fields.get("env")
        if spec is None:
            raise LmmR1Error(f"{ex.source}: episode.turns is set but the row has no 'env' field "
                             "(write env rows with `lmmr1 data synth sokoban`)")
        for _ in range(n):
            env = make_env(spec, ex.source or "env")
            env.reset(_env_seed(spec, g))
            episodes.append(Episode(g, env, firsts[g]))

    parts: list[Rollout] = []
    row_ep: list[int] = []
    row_turn: list[int] = []
    anchors: list[Any] = []
    step_rewards: list[float] = []
    valid: list[bool] = []
    budget = cfg.max_episode_tokens or None
    base_seed = params.seed if params.seed is not None else 0
    for turn in range(cfg.turns):
        live = [i for i, e in enumerate(episodes) if not e.done]
        if not live:
            break
        seed = random.Random(f"{base_seed}:turn:{turn}").getrandbits(63)
        if turn == 0:
            p = SamplingParams(n=n, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                               max_new_tokens=params.max_new_tokens, stop=list(params.stop), seed=seed)
            ro = sampler(contexts_batch(proc, [[f] for f in firsts]), p)
        else:
            left = [budget - episodes[i].generated for i in live] if budget else [params.max_new_tokens]
            p = SamplingParams(n=1, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                               max_new_tokens=max(1, min(params.max_new_tokens, max(left))), stop=list(params.stop),
                               seed=seed)
            ro = sampler(contexts_batch(proc, [episodes[i].context(cfg.context, cfg.last_k) for i in live]), p)
        ro.prompts = ro.prompts.to("cpu")
        for r, i in enumerate(live):
            ep = episodes[i]
            length = int(ro.completion_mask[r].sum())
            if budget and ep.generated + length > budget:
                _cut(ro, r, budget - ep.generated, proc.pad_token_id)
                ro.texts[r] = proc.decode(_ids_of(ro, r))
                length = budget - ep.generated
            ep.generated += length
            act = Segment(_ids_of(ro, r), True)
            res = ep.env.step(action_text(ro.texts[r]))
            ok = bool(res.info.get("valid", True))
            reward = float(res.reward) + (0.0 if ok else cfg.invalid_reward)
            ep.rewards.append(reward)
            row_ep.append(i)
            row_turn.append(turn)
            anchors.append(res.info.get("anchor"))
            step_rewards.append(reward)
            valid.append(ok)
            ep.success = bool(res.info.get("success", False))
            obs_seg = None
            if res.done:
                ep.done = True
            elif turn + 1 >= cfg.turns:
                ep.done, ep.truncated = True, "turns"
            elif budget and ep.generated >= budget:
                ep.done, ep.truncated = True, "episode_tokens"
            else:
                obs = res.observation
                text = cfg.observation_template.replace("{observation}", obs.text)
                text = text if ok or not cfg.feedback else f"{cfg.invalid_feedback}\n{text}".strip()
                obs_seg = enc.segment(text, list(obs.images), act, ro.finish_reasons[r], f"{examples[ep.group].source} turn {turn + 1}")
                if cfg.context == "current":  # Markov: the observation alone, as a first prompt is written
                    content = [{"type": "image"} for _ in obs.images] + [{"type": "text", "text": text}]
                    pb = proc([[{"role": "user", "content": content}]], images=[list(obs.images)],
                              row_names=[f"{examples[ep.group].source} turn {turn + 1}"])
                    ep.current = Segment(pb.input_ids[0].tolist(), False, pb.pixel_values, pb.image_grid_thw)
                    ctx = [ep.current]
                else:
                    ctx = ep.context(cfg.context, cfg.last_k) + [act, obs_seg]
                if cfg.max_images and sum(s.n_images for s in ctx) > cfg.max_images:
                    ep.done, ep.truncated, obs_seg = True, "images", None
                elif cfg.max_context_tokens and sum(len(s.ids) for s in ctx) > cfg.max_context_tokens:
                    ep.done, ep.truncated, obs_seg = True, "context", None
            ep.turns.append((act, obs_seg))
        parts.append(ro)
    ro = concat_rollouts(parts, proc.pad_token_id) if len(parts) > 1 else parts[0]
    ro.turns = TurnIndex(episode=torch.tensor(row_ep, dtype=torch.long),
                         group=torch.tensor([episodes[e].group for e in row_ep], dtype=torch.long),
                         turn=torch.tensor(row_turn, dtype=torch.long), anchor=anchors)
    return EpisodeBatch(ro, step_rewards, row_ep, episodes, valid)



def evaluate_episodes(lm: LoadedModel, examples: list, images: list[list], cfg: EpisodeConfig, *,
                      max_new_tokens: int, temperature: float = 0.0, batch_size: int = 32, seed: int = 0,
                      keep: int = 3) -> dict[str, Any]:
    """Held-out multi-turn play: one episode per env row (greedy by default); the success rate is
    the fraction of episodes that solved their task within ``cfg.turns`` turns and the budgets."""
    eps: list[Episode] = []
    valid: list[bool] = []
    lengths: list[int] = []
    cut = 0
    kept: list[dict[str, Any]] = []
    for start in range(0, len(examples), batch_size):
        exs, ims = examples[start:start + batch_size], images[start:start + batch_size]
        eb = play_episodes(lm, exs, ims, cfg, SamplingParams(n=1, temperature=temperature,
                                                            max_new_tokens=max_new_tokens, seed=seed + start))
        eps += eb.episodes
        valid += eb.valid
        lengths += eb.rollout.lengths.tolist()
        cut += sum(f == "length" for f in eb.rollout.finish_reasons)
        for e in eb.episodes[: max(0, keep - len(kept))]:
            kept.append({"source": exs[e.group].source, "actions": [lm.processor.decode(a.ids) for a, _ in e.turns],
                         "return": e.ret, "success": e.success, "truncated": e.truncated})
    n = max(1, len(eps))
    success = sum(e.success for e in eps) / n
    return {"problems": len(examples), "samples": len(eps), "accuracy": success, "success_rate": success,
            "pass@1": success, "mean_return": sum(e.ret for e in eps) / n,
            "mean_turns": sum(len(e.turns) for e in eps) / n,
            "format_rate": sum(valid) / max(1, len(valid)),  # the fraction of turns whose action the env accepted
            "mean_length": sum(lengths) / max(1, len(lengths)),
            "truncated": cut / max(1, len(lengths)),  # turns whose answer hit max_new_tokens (as single-turn eval)
            "episodes_truncated": sum(e.truncated is not None for e in eps) / n,  # ended by a budget, unsolved or not
            "examples": kept}
