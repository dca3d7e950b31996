"""math-verify in worker processes with a hard per-item timeout.

math-verify's own timeouts use ``signal.alarm``, which only works in a process's main thread:
called from a thread pool, an HTTP server thread or a Ray worker, the timeout silently does
nothing (peers lost whole MATH scores to this) and pathological LaTeX such as
``9^{9^{9^{9^{9}}}}`` can stall a batch forever.  Here each check runs in the main thread of a
worker process; the parent waits with a deadline and kills and replaces a worker that
overruns.  A timed-out item scores 0.0 and is counted.  The pool is thread-safe.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

TIMEOUT = "timeout"

# The worker is a plain interpreter reading one JSON [gold, pred] per line and answering 1/0.
# A subprocess (not multiprocessing) means no re-import of the caller's __main__ and nothing of
# the parent (threads, locks, CUDA) inherited: safe from threads and from Ray workers.
# Mode "lmmr1" is the LMM-R1 reference verifier's parse (rewards/lmmr1_verifier.py): the gold with
# LaTeX extraction only (first match), the prediction with boxed-first LaTeX extraction over the
# whole completion and no un-anchored fallback, verify(prediction, gold) in the reference's order,
# and an unparseable gold scoring 1 (the reference's "skip this example").
_WORKER_CODE = r"""
import json, sys
from math_verify import parse, verify
t = int(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "default"
if mode == "lmmr1":
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig
    GOLD = [LatexExtractionConfig()]
    PRED = [LatexExtractionConfig(normalization_config=NormalizationConfig(nits=False, malformed_operators=False,
                                                                           basic_latex=True, boxed="all", units=True),
                                  boxed_match_priority=0, try_extract_without_anchor=False)]
while True:
    line = sys.stdin.readline()
    if not line:
        break
    try:
        g, p = json.loads(line)
        if mode == "lmmr1":
            a = parse(g, extraction_mode="first_match", extraction_config=GOLD, parsing_timeout=t)
            if not a:
                ok = True
            else:
                b = parse(p, extraction_mode="first_match", extraction_config=PRED, parsing_timeout=t)
                ok = bool(verify(b, a, timeout_seconds=t))
        else:
            a = parse(g, parsing_timeout=t)
            b = parse(p, parsing_timeout=t)
            ok = bool(a) and bool(b) and bool(verify(a, b, timeout_seconds=t))
    except BaseException:
        ok = False
    sys.stdout.write("1\n" if ok else "0\n")
    sys.stdout.flush()
"""
MODES = ("default", "lmmr1")


class _Worker:
    def __init__(self, inner_timeout: int, mode: str = "default"):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, str(inner_timeout), mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
        )
        self.fd = self.proc.stdout.fileno()
        self.buf = b""

    def send(self, pair: tuple[str, str]) -> None:
        self.proc.stdin.write((json.dumps(list(pair)) + "\n").encode())

    def read_verdict(self) -> bool | None:
        """Consume available output; True/False once a full line arrived, None if not yet."""
        chunk = os.read(self.fd, 64)
        if not chunk:
            raise EOFError("math-verify worker exited")
        self.buf += chunk
        if b"\n" not in self.buf:
            return None
        line, self.buf = self.buf.split(b"\n", 1)
        return line.strip() == b"1"

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:  # noqa: BLE001
                pass


class MathVerifier:
    """``verify_many([(gold, pred), ...]) -> [True | False | "timeout"]`` with a hard timeout."""

    def __init__(self, workers: int = 2, timeout: float = 5.0, cache_size: int = 65536, mode: str = "default"):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.n_workers = workers
        self.timeout = float(timeout)
        self._inner = max(1, int(self.timeout))
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._cache_size = cache_size
        self.timeouts = 0
        self.checked = 0

    def _ensure_started(self) -> None:
        while len(self._workers) < self.n_workers:
            self._workers.append(_Worker(self._inner, self.mode))

    def verify_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool | str]:
        results: list[bool | str | None] = [None] * len(pairs)
        todo: dict[tuple[str, str], list[int]] = {}
        with self._lock:
            for i, pair in enumerate(pairs):
                if pair in self._cache:
                    self._cache.move_to_end(pair)
                    results[i] = self._cache[pair]
                else:
                    todo.setdefault(pair, []).append(i)
            if todo:
                self._ensure_started()
                self._run(list(todo), todo, results)
        return results  # type: ignore[return-value]

    def _run(self, keys: list[tuple[str, str]], where: dict, results: list) -> None:
        pending = list(reversed(keys))
        busy: dict[int, tuple[tuple[str, str], float]] = {}  # worker slot -> (pair, deadline)
        while pending or busy:
            for slot in range(len(self._workers)):
                if slot not in busy and pending:
                    pair = pending.pop()
                    try:
                        self._workers[slot].send(pair)
                    except (BrokenPipeError, OSError):
                        self._replace(slot)
                        self._workers[slot].send(pair)
                    busy[slot] = (pair, time.monotonic() + self.timeout)
            next_deadline = min(d for _, d in busy.values())
            fds = [self._workers[s].fd for s in busy]
            ready, _, _ = select.select(fds, [], [], max(0.0, next_deadline - time.monotonic()))
            for slot in list(busy):
                pair, deadline = busy[slot]
                w = self._workers[slot]
                verdict: bool | str | None = None
                if w.fd in ready:
                    try:
                        verdict = w.read_verdict()
                    except (EOFError, OSError):  # the worker died (e.g. out of memory): not equal
                        verdict = False
                        self._replace(slot)
                if verdict is None and time.monotonic() >= deadline:
                    verdict = TIMEOUT
                    self.timeouts += len(where[pair])
                    self._replace(slot)
                if verdict is None:
                    continue
                del busy[slot]
                self.checked += len(where[pair])
                for i in where[pair]:
                    results[i] = verdict
                if verdict != TIMEOUT:
                    self._cache[pair] = bool(verdict)
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = _Worker(self._inner, self.mode)

    def close(self) -> None:
        with self._lock:
            for w in self._workers:
                w.kill()
            self._workers = []

    def __del__(self):  # best effort; workers are daemons and die with the parent anyway
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
