"""HTTP reward server compatible with LMM-R1's remote reward API, plus a per-component endpoint.

``POST /get_reward``  ``{"query": [...], "prompts": [...], "labels": [...]}`` -> ``{"rewards": [...]}``
(LMM-R1 / OpenRLHF: a query is prompt + completion; the completion is the query minus its prompt).
``POST /rewards``  ``{"completions": [...], "answers": [...], "fields": [{...}]?, "prompts": [...]?}``
-> ``{"rewards": [...], "components": {...}, "errors": [...]}``.  ``GET /health`` -> ``{"ok": true}``.

Loopback by default, request bodies bounded, malformed requests answered 4xx with a message,
requests served concurrently (one thread each; the math-verify pool is shared and thread-safe).
A request can hold its thread only so long: a Content-Length that is negative, not a number or
over the limit is refused before reading; a client that sends fewer bytes than it declared is
dropped after ``REQUEST_TIMEOUT`` seconds; scoring is linear-time (see rewards/answer.py), so one
huge completion no longer holds the GIL and freezes the other threads.  A reward that fails (a
custom function that raises or hangs) answers 500 with the one-line error.
"""

from __future__ import annotations

import errno
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lmmr1.errors import LmmR1Error
from lmmr1.rewards.base import Sample, prompt_parts
from lmmr1.rewards.compose import CompositeReward

DEFAULT_MAX_BODY = 16 * 1024 * 1024
REQUEST_TIMEOUT = 60.0  # seconds a connection may stay silent (reading the request or between requests)


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _str_list(body: dict, key: str, n: int | None = None, required: bool = True) -> list | None:
    if key not in body:
        if required:
            raise BadRequest(400, f"missing field {key!r}")
        return None
    value = body[key]
    if not isinstance(value, list):
        raise BadRequest(400, f"field {key!r} must be a list")
    if n is not None and len(value) != n:
        raise BadRequest(400, f"field {key!r} has {len(value)} items, expected {n}")
    return value


def samples_from_lmm_r1(body: dict) -> list[Sample]:
    queries = _str_list(body, "query")
    prompts = _str_list(body, "prompts", len(queries), required=False) or [""] * len(queries)
    labels = _str_list(body, "labels", len(queries))
    out = []
    for q, p, lab in zip(queries, prompts, labels, strict=True):
        q, p = str(q), str(p or "")
        completion = q[len(p):] if p and q.startswith(p) else q
        out.append(Sample(completion=completion, answer=lab, prompt=p))
    return out


def samples_from_json(body: dict) -> list[Sample]:
    completions = _str_list(body, "completions")
    n = len(completions)
    answers = _str_list(body, "answers", n)
    fields = _str_list(body, "fields", n, required=False) or [{} for _ in range(n)]
    prompts = _str_list(body, "prompts", n, required=False) or [""] * n
    tokens = _str_list(body, "completion_tokens", n, required=False) or [None] * n
    if not all(isinstance(f, dict) for f in fields):
        raise BadRequest(400, "field 'fields' must be a list of objects")
    if not all(isinstance(c, str) for c in completions):
        raise BadRequest(400, "field 'completions' must be a list of strings")
    out = []
    for c, a, p, f, t in zip(completions, answers, prompts, fields, tokens, strict=True):
        text, messages = prompt_parts(p)  # a prompt may be text or chat messages (TRL conversational)
        out.append(Sample(completion=c, answer=a, prompt=text, fields=f, completion_tokens=t, messages=messages))
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the stdlib default (5) resets connections under a burst of clients


def make_server(reward: CompositeReward, host: str = "127.0.0.1", port: int = 5000,
                max_body: int = DEFAULT_MAX_BODY, request_timeout: float = REQUEST_TIMEOUT) -> ThreadingHTTPServer:
    """A ready-to-serve server (call ``serve_forever``); port 0 picks a free port.

    A port already in use (or a host that cannot be bound) is a one-line :class:`LmmR1Error`.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = request_timeout  # socket timeout: a silent or short-bodied client cannot hold a thread

        def log_message(self, fmt: str, *args: Any) -> None:  # keep the console quiet
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._send(200, {"ok": True, "rewards": reward.names})
            else:
                self._send(404, {"error": f"no route GET {self.path}; use POST /get_reward or POST /rewards"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                if self.path not in ("/get_reward", "/rewards"):
                    raise BadRequest(404, f"no route POST {self.path}; use /get_reward or /rewards")
                length = self.headers.get("Content-Length")
                if length is None:
                    raise BadRequest(411, "Content-Length is required")
                try:
                    size = int(length)
                except ValueError as e:
                    raise BadRequest(400, "Content-Length must be an integer") from e
                if size < 0:  # rfile.read(-1) would wait for the client to close the connection
                    raise BadRequest(400, f"Content-Length must be >= 0, got {size}")
                if size > max_body:
                    raise BadRequest(413, f"request body of {size} bytes exceeds the limit of {max_body}")
                raw = self.rfile.read(size)
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise BadRequest(400, f"body is not valid JSON: {e}") from e
                if not isinstance(body, dict):
                    raise BadRequest(400, "body must be a JSON object")
                if self.path == "/get_reward":
                    result = reward(samples_from_lmm_r1(body))
                    # LMM-R1 clients expect numbers only: an error row scores 0.0, reported alongside.
                    self._send(200, {"rewards": [0.0 if t is None else t for t in result.total],
                                     "errors": result.errors})
                else:
                    result = reward(samples_from_json(body))
                    self._send(200, {"rewards": result.total, "components": result.components,
                                     "errors": result.errors})
            except BadRequest as e:
                if e.status in (400, 411, 413):  # the unread body (if any) must not be parsed as a request
                    self.close_connection = True
                self._send(e.status, {"error": str(e)})
            except LmmR1Error as e:  # a reward failed (custom function raised, hung, returned NaN)
                self._send(500, {"error": str(e)})
            except (TimeoutError, ConnectionError):
                self.close_connection = True  # the client went silent or away mid-request
            except Exception as e:  # noqa: BLE001  (a bug must answer, not drop the connection)
                self._send(500, {"error": f"internal error: {type(e).__name__}: {e}"})

    try:
        return _Server((host, port), Handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise LmmR1Error(f"port {port} on {host} is already in use (another lmmr1 serve-rewards?); "
                             "pick another with --port") from None
        raise LmmR1Error(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    return t
