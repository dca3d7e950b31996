"""Run user reward code with a deadline: a function that never returns must not hang training.

Why a thread and not the math-verify worker pool (``mathverify_pool``): that pool runs one fixed
program in subprocesses and only ever ships two strings; a user function lives in the caller's
interpreter (module state, closures, a loaded tokenizer) and its samples may carry images, so
moving it to a subprocess would change what it sees.  A daemon thread that overruns is abandoned,
not killed (Python cannot kill a thread): the caller gets :class:`CallTimeout` at once, and the
run stops with an error naming the function, so the abandoned thread lives only until exit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class CallTimeout(Exception):
    """The call did not return within its deadline (its thread was abandoned)."""


def call_with_timeout(fn: Callable[[], Any], timeout: float | None, name: str = "reward") -> Any:
    """``fn()``'s value or exception; :class:`CallTimeout` after ``timeout`` seconds.

    ``timeout`` None or <= 0 calls ``fn`` inline (for functions that need the calling thread,
    e.g. ones that use ``signal``).
    """
    if timeout is None or timeout <= 0:
        return fn()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (SystemExit in user code too: re-raised below as is)
            box["error"] = e

    t = threading.Thread(target=run, daemon=True, name=f"lmmr1-reward-{name}")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise CallTimeout(f"no result after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]
