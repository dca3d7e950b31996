"""How many different answers a Sokoban model gives on held-out levels (greedy), per view.

    python benchmarks/sokoban_answers.py RUN_DIR MODEL_DIR [MODEL_DIR ...]

RUN_DIR is a pipeline output holding data/sokoban_test_{text,image}.jsonl.  Why: a success rate
can rise because a policy found a better *constant* move list rather than because it reads the
level; one distinct answer over all levels says the model ignores its input (docs/results.md).
"""
import collections
import sys

import torch

from lmmr1.data.benchmarks import load_benchmark
from lmmr1.models import load_model
from lmmr1.rollout import SamplingParams, sample

torch.set_num_threads(1)
root = sys.argv[1]
for model in sys.argv[2:]:
    lm = load_model(model)
    for mod in ("text", "image"):
        ds = load_benchmark(f"{root}/data/sokoban_test_{mod}.jsonl", name=mod, system_prompt="none")
        outs = []
        for s in range(0, len(ds), 80):
            exs = ds.examples[s:s+80]
            pb = lm.processor([e.messages for e in exs], images=[e.images() for e in exs])
            ro = sample(lm, pb, SamplingParams(n=1, temperature=0.0, max_new_tokens=40))
            outs += [t.split("<answer>")[-1].split("</answer>")[0] for t in ro.texts]
        c = collections.Counter(outs)
        print(model.split("/")[-2], mod, "distinct answers:", len(c), "top:", c.most_common(3), flush=True)
