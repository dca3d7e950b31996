"""A reward computed by an HTTP server speaking LMM-R1's remote reward API (``reward: {url: ...}``).

Request ``POST {url}`` with ``{"query": [prompt+completion], "prompts": [...], "labels": [...]}``;
answer ``{"rewards": [...]}``.  A query is the chat-templated prompt + the completion, as
LMM-R1 servers expect.  Every attempt has an HTTP ``timeout``; transient failures (refused,
timed out, 5xx) are retried with backoff; when the server stays unreachable the run stops with
an error naming the URL instead of training on made-up zeros.  An answer that is not JSON, or
holds a NaN or a non-number, is an error at once (retrying a wrong server does not help).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from lmmr1.errors import LmmR1Error
from lmmr1.rewards.base import RewardError, Sample, Verdict
from lmmr1.rewards.custom import to_floats

DEFAULT_TIMEOUT = 30.0  # seconds per HTTP attempt


class RemoteReward:
    def __init__(self, url: str, name: str = "remote", timeout: float | None = DEFAULT_TIMEOUT, retries: int = 3,
                 backoff: float = 0.5):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise LmmR1Error(f"reward url {url!r} must start with http:// or https://")
        if timeout is None or timeout <= 0:
            timeout = DEFAULT_TIMEOUT  # an HTTP call without a deadline is how training hangs forever
        self.url, self.name, self.timeout, self.retries, self.backoff = url, name, float(timeout), retries, backoff

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        if not samples:
            return []
        prompts = [s.chat_prompt or s.prompt for s in samples]
        body = json.dumps({
            "query": [p + s.completion for p, s in zip(prompts, samples, strict=True)],
            "prompts": prompts,
            "labels": ["" if s.answer is None else str(s.answer) for s in samples],
        }).encode()
        where = f"reward server {self.url}"
        last = ""
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                if 400 <= e.code < 500:  # our request is wrong: retrying will not help
                    raise RewardError(f"{where} rejected the request: {e.code} {e.read()[:200]!r}") from None
                last = f"HTTP {e.code}"
            except TimeoutError:
                last = f"no answer within {self.timeout:g} s (timeout)"
            except urllib.error.URLError as e:
                reason = e.reason
                last = (f"no answer within {self.timeout:g} s (timeout)" if isinstance(reason, (TimeoutError, socket.timeout))
                        else f"cannot connect ({reason})")
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                last = f"connection failed ({type(e).__name__}: {e})"
            else:
                try:
                    payload = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise RewardError(f"{where} answered with invalid JSON ({e}): {raw[:80]!r}") from None
                return to_floats(payload, len(samples), where, samples)
            if attempt < self.retries:
                time.sleep(self.backoff * (2**attempt))
        raise RewardError(f"{where} failed {self.retries + 1} times; last error: {last}")
