"""A reward computed by an HTTP server speaking LMM-R1's remote reward API (``reward: {url: ...}``).

Request ``POST {url}`` with ``{"query": [prompt+completion], "prompts": [...], "labels": [...]}``;
answer ``{"rewards": [...]}``.  Transient failures are retried with backoff; when the server
stays unreachable the run stops with a clear error instead of training on made-up zeros.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from lmmr1.errors import LmmR1Error
from lmmr1.rewards.base import Sample, Verdict
from lmmr1.rewards.custom import _to_floats


class RemoteReward:
    def __init__(self, url: str, name: str = "remote", timeout: float = 30.0, retries: int = 3, backoff: float = 0.5):
        if not url.startswith(("http://", "https://")):
            raise LmmR1Error(f"reward url {url!r} must start with http:// or https://")
        self.url, self.name, self.timeout, self.retries, self.backoff = url, name, timeout, retries, backoff

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        body = json.dumps({
            "query": [s.prompt + s.completion for s in samples],
            "prompts": [s.prompt for s in samples],
            "labels": ["" if s.answer is None else str(s.answer) for s in samples],
        }).encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read())
                return _to_floats(payload, len(samples), f"reward server {self.url}")
            except urllib.error.HTTPError as e:
                if 400 <= e.code < 500:  # our request is wrong: retrying will not help
                    raise LmmR1Error(f"reward server {self.url} rejected the request: {e.code} {e.read()[:200]!r}") from e
                last = e
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
                last = e
            if attempt < self.retries:
                time.sleep(self.backoff * (2**attempt))
        raise LmmR1Error(f"reward server {self.url} failed {self.retries + 1} times; last error: {last}")
