"""The value model for PPO/GAE: a copy of the policy's backbone with a scalar head.

V(s_t) is read at the position that predicts completion token t, i.e. the state before the
token is chosen — the same hidden states the policy's log-probs use (``completion_hidden``).
"""

from __future__ import annotations

import torch
from torch import nn

from lmmr1.models.loader import LoadedModel
from lmmr1.models.processor import PromptBatch
from lmmr1.models.sequence import completion_hidden


class Critic(nn.Module):
    def __init__(self, lm: LoadedModel):
        super().__init__()
        self.lm = lm  # forward helpers; a plain dataclass, so nn.Module does not see the weights through it
        # Register the transformer (vision tower + language model, without the unused LM head) as a
        # submodule: only then do parameters(), state_dict() and the critic optimizer see the backbone.
        # (Holding just ``lm`` trained a linear probe on frozen features, issue 9.)  Leaving the LM head
        # out also keeps tied embedding/head tensors from appearing twice in state_dict().
        self.backbone = lm.base.model
        hidden = lm.lm_head.in_features
        self.head = nn.Linear(hidden, 1, device=lm.device, dtype=torch.float32)
        nn.init.zeros_(self.head.weight)  # start at V = 0: no made-up value estimates
        nn.init.zeros_(self.head.bias)
        # The LM head is unused by the critic; with tied embeddings this also freezes the critic's
        # input embeddings (its transformer blocks and value head still train).
        lm.lm_head.requires_grad_(False)

    def values(self, prompts: PromptBatch, prompt_index, completion_ids, completion_mask,
               shared_prefix: bool | None = None) -> torch.Tensor:
        h = completion_hidden(self.lm, prompts, prompt_index, completion_ids, completion_mask,
                              shared_prefix=shared_prefix)
        return self.head(h.float()).squeeze(-1) * completion_mask.to(h.device)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]
