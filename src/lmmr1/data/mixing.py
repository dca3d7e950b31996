"""Mix datasets with probabilities, deterministically for a seed, with a saveable position.

Each draw picks a dataset with the given probabilities, then that dataset's next row in a
per-epoch shuffled order.  Both choices are pure functions of (seed, position, dataset,
epoch), so ``state_dict()`` is a few integers and a resumed run draws exactly what an
uninterrupted run would have drawn.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from lmmr1.errors import LmmR1Error


class MixtureSampler:
    def __init__(self, sizes: Sequence[int], probs: Sequence[float] | None = None, seed: int = 0,
                 shuffle: bool = True):
        if not sizes or any(s <= 0 for s in sizes):
            raise LmmR1Error(f"every dataset in a mixture needs at least one row, got sizes {list(sizes)}")
        if probs is None:
            total = sum(sizes)
            probs = [s / total for s in sizes]  # proportional to size = plain concatenation
        if len(probs) != len(sizes):
            raise LmmR1Error(f"probs has {len(probs)} values for {len(sizes)} datasets")
        if any(p < 0 for p in probs) or sum(probs) <= 0:
            raise LmmR1Error(f"probs must be non-negative with a positive sum, got {list(probs)}")
        s = float(sum(probs))
        self.sizes, self.probs, self.seed, self.shuffle = list(sizes), [p / s for p in probs], seed, shuffle
        self.position = 0
        self.cursors = [0] * len(sizes)
        self.epochs = [0] * len(sizes)
        self._orders: dict[tuple[int, int], list[int]] = {}

    def _order(self, d: int, epoch: int) -> list[int]:
        key = (d, epoch)
        if key not in self._orders:
            order = list(range(self.sizes[d]))
            if self.shuffle:
                random.Random(f"{self.seed}:order:{d}:{epoch}").shuffle(order)
            self._orders = {k: v for k, v in self._orders.items() if k[0] != d}  # keep one epoch per dataset
            self._orders[key] = order
        return self._orders[key]

    def next(self) -> tuple[int, int]:
        """(dataset index, row index) of the next draw."""
        u = random.Random(f"{self.seed}:pick:{self.position}").random()
        acc, d = 0.0, len(self.probs) - 1
        for i, p in enumerate(self.probs):
            acc += p
            if u < acc:
                d = i
                break
        row = self._order(d, self.epochs[d])[self.cursors[d]]
        self.cursors[d] += 1
        if self.cursors[d] == self.sizes[d]:
            self.cursors[d], self.epochs[d] = 0, self.epochs[d] + 1
        self.position += 1
        return d, row

    def take(self, k: int) -> list[tuple[int, int]]:
        return [self.next() for _ in range(k)]

    def state_dict(self) -> dict:
        return {"position": self.position, "cursors": list(self.cursors), "epochs": list(self.epochs),
                "seed": self.seed, "sizes": list(self.sizes)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("sizes") != self.sizes:
            raise LmmR1Error(f"saved data position is for dataset sizes {state.get('sizes')}, but the data now has "
                             f"sizes {self.sizes}; resume with the same data")
        self.position, self.cursors, self.epochs = state["position"], list(state["cursors"]), list(state["epochs"])
