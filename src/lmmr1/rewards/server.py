"""HTTP reward server compatible with LMM-R1's remote reward API, plus a per-component endpoint.

``POST /get_reward``  ``{"query": [...], "prompts": [...], "labels": [...]}`` -> ``{"rewards": [...]}``
(LMM-R1 / OpenRLHF: a query is prompt + completion; the completion is the query minus its prompt).
``POST /rewards``  ``{"completions": [...], "answers": [...], "fields": [{...}]?, "prompts": [...]?}``
-> ``{"rewards": [...], "components": {...}, "errors": [...]}``.  ``GET /health`` -> ``{"ok": true}``.

Why starlette on uvicorn: the standard library's ``http.server`` scored in the handler thread, so one
heavy request starved ``/health`` and a bad ``Content-Length`` could stall a thread.  Here the event
loop only reads and answers; decoding, scoring and encoding run in a bounded thread pool
(``workers``), so a 1 MB completion never delays other requests, and math-verify's own process pool
does the CPU-heavy checks outside the GIL.  Guarantees, each tested:

* loopback by default; request bodies bounded (a ``Content-Length`` over the limit is refused from
  the header alone, a chunked body is cut at the limit) -> 413; a malformed ``Content-Length`` -> 400;
* a client that declares more bytes than it sends is answered 408 and dropped after
  ``request_timeout`` seconds; scoring longer than ``score_timeout`` answers 504;
* a reward that fails (a custom function that raises or hangs) answers 500 with the one-line error;
* more than ``max_concurrency`` open connections/requests are answered 503 instead of queuing memory;
* a port in use is a one-line :class:`LmmR1Error`; SIGINT finishes in-flight requests, then exits;
* one access-log line per request (``access_log`` callback; the CLI prints it on stderr).

starlette and uvicorn are the ``server`` extra (``pip install 'lmmr1[server]'``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from lmmr1.errors import LmmR1Error
from lmmr1.rewards.base import Sample, prompt_parts
from lmmr1.rewards.compose import CompositeReward

DEFAULT_MAX_BODY = 16 * 1024 * 1024
REQUEST_TIMEOUT = 60.0  # seconds a client may take to send its body, or stay idle between requests
SCORE_TIMEOUT = 600.0  # seconds one request's scoring may take before it is answered 504
DEFAULT_WORKERS = 8  # scoring threads; math-verify's worker processes do the heavy part
MAX_CONCURRENCY = 512  # open connections + in-flight requests before new ones get 503
SHUTDOWN_GRACE = 30.0  # seconds Ctrl-C waits for in-flight requests


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


def score_body(reward: CompositeReward, path: str, raw: bytes) -> tuple[int, dict]:
    """Decode, score and shape one request body (runs in a worker thread): ``(status, payload)``."""
    try:
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(400, f"body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise BadRequest(400, "body must be a JSON object")
        if path == "/get_reward":
            result = reward(samples_from_lmm_r1(body))
            # LMM-R1 clients expect numbers only: an error row scores 0.0, reported alongside.
            return 200, {"rewards": [0.0 if t is None else t for t in result.total], "errors": result.errors}
        result = reward(samples_from_json(body))
        return 200, {"rewards": result.total, "components": result.components, "errors": result.errors}
    except BadRequest as e:
        return e.status, {"error": str(e)}
    except LmmR1Error as e:  # a reward failed (custom function raised, hung, returned NaN)
        return 500, {"error": str(e)}
    except Exception as e:  # noqa: BLE001  (a bug must answer, not drop the connection)
        return 500, {"error": f"internal error: {type(e).__name__}: {e}"}


def _require_extra():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise LmmR1Error(f"the reward server needs starlette and uvicorn ({e.name} is missing): "
                         "pip install 'lmmr1[server]'") from None


def _bind(host: str, port: int) -> socket.socket:
    """Listen before serving, so a busy port is a one-line error now and port 0 has a number at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise LmmR1Error(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart right after a stop
        sock.bind(addr)
        sock.listen(2048)  # a burst of clients queues instead of being reset
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise LmmR1Error(f"port {port} on {host} is already in use (another lmmr1 serve-rewards?); "
                             "pick another with --port") from None
        raise LmmR1Error(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


class _Stopped(Exception):
    """Raised by the re-delivered stop signal once uvicorn has shut down gracefully."""


def _stop(signum, frame) -> None:
    raise _Stopped


class RewardServer:
    """A bound reward server: ``serve_forever()`` (blocks; SIGINT stops it gracefully in the main
    thread), ``shutdown()`` from another thread, ``server_close()``; ``server_address`` is bound."""

    def __init__(self, reward: CompositeReward, sock: socket.socket, *, max_body: int, request_timeout: float,
                 score_timeout: float, workers: int, max_concurrency: int,
                 access_log: Callable[[str], None] | None):
        import uvicorn

        self.reward, self.socket = reward, sock
        self.server_address = sock.getsockname()[:2]
        self.max_body, self.request_timeout, self.score_timeout = max_body, request_timeout, score_timeout
        self.access_log = access_log
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lmmr1-reward")
        config = uvicorn.Config(self._app(), log_config=None, log_level="warning", access_log=False,
                                lifespan="off", timeout_keep_alive=max(1, int(request_timeout)),
                                limit_concurrency=max_concurrency, timeout_graceful_shutdown=SHUTDOWN_GRACE,
                                server_header=False)
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    # ------------------------------------------------------------------ the ASGI app
    def _app(self):
        from starlette.applications import Starlette
        from starlette.requests import ClientDisconnect, Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        reward = self.reward

        def answer(request: Request, status: int, payload: dict, started: float, close: bool = False,
                   note: str = "") -> JSONResponse:
            if self.access_log is not None:
                client = request.client.host if request.client else "-"
                extra = f" {payload['error'][:200]}" if status >= 400 and "error" in payload else note
                self.access_log(f"{client} {request.method} {request.url.path} {status} "
                                f"{(time.perf_counter() - started) * 1000:.1f} ms{extra}")
            # an unread (or partly read) body must not be parsed as the next request
            return JSONResponse(payload, status, headers={"Connection": "close"} if close else None)

        async def read_body(request: Request) -> bytes:
            length = request.headers.get("content-length")
            if length is not None:  # uvicorn's parser already refused non-digit values (400)
                try:
                    size = int(length)
                except ValueError as e:
                    raise BadRequest(400, "Content-Length must be an integer") from e
                if size < 0:
                    raise BadRequest(400, f"Content-Length must be >= 0, got {size}")
                if size > self.max_body:
                    raise BadRequest(413, f"request body of {size} bytes exceeds the limit of {self.max_body}")
            chunks, total = [], 0

            async def collect() -> None:
                nonlocal total
                async for chunk in request.stream():
                    total += len(chunk)
                    if total > self.max_body:  # chunked transfer: no header to refuse up front
                        raise BadRequest(413, f"request body exceeds the limit of {self.max_body} bytes")
                    chunks.append(chunk)

            try:
                await asyncio.wait_for(collect(), self.request_timeout)
            except asyncio.TimeoutError:
                raise BadRequest(408, f"request body not received within {self.request_timeout:g} s") from None
            return b"".join(chunks)

        async def health(request: Request) -> JSONResponse:
            return answer(request, 200, {"ok": True, "rewards": reward.names}, time.perf_counter())

        async def score(request: Request) -> JSONResponse:
            started = time.perf_counter()
            try:
                raw = await read_body(request)
            except BadRequest as e:
                return answer(request, e.status, {"error": str(e)}, started, close=True)
            except ClientDisconnect:
                return answer(request, 400, {"error": "client disconnected"}, started, close=True)
            loop = asyncio.get_running_loop()
            try:
                status, payload = await asyncio.wait_for(
                    loop.run_in_executor(self.pool, score_body, reward, request.url.path, raw), self.score_timeout)
            except asyncio.TimeoutError:
                status, payload = 504, {"error": f"scoring took longer than {self.score_timeout:g} s"}
            n = len(payload.get("rewards") or [])
            return answer(request, status, payload, started, note=f" {n} samples")

        async def not_found(request: Request, exc: Exception) -> JSONResponse:
            return answer(request, 404, {"error": f"no route {request.method} {request.url.path}; use POST "
                                                  "/get_reward, POST /rewards or GET /health"}, time.perf_counter(),
                          close=request.method != "GET")

        async def wrong_method(request: Request, exc: Exception) -> JSONResponse:
            return answer(request, 405, {"error": f"{request.url.path} does not take {request.method}"},
                          time.perf_counter(), close=True)

        return Starlette(routes=[Route("/health", health, methods=["GET"]),
                                 Route("/get_reward", score, methods=["POST"]),
                                 Route("/rewards", score, methods=["POST"])],
                         exception_handlers={404: not_found, 405: wrong_method})

    # ------------------------------------------------------------------ lifecycle
    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` or (main thread) SIGINT/SIGTERM, which stops accepting, lets
        in-flight requests finish (up to 30 s), then returns normally.

        uvicorn catches the signal, shuts down gracefully, then re-raises it to the handler that was
        installed before; that handler is ours for the duration, so the re-raised signal ends
        ``serve_forever`` quietly instead of a KeyboardInterrupt or a kill by SIGTERM (exit 143)."""
        main = threading.current_thread() is threading.main_thread()
        saved = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            self._server.run(sockets=[self.socket])
        except _Stopped:
            pass
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            self._stopped.set()

    @property
    def started(self) -> bool:
        return self._server.started

    def shutdown(self) -> None:
        """Stop a server running in another thread; returns once it has stopped."""
        self._server.should_exit = True
        self._stopped.wait(SHUTDOWN_GRACE + 10)

    def server_close(self) -> None:
        self.socket.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def make_server(reward: CompositeReward, host: str = "127.0.0.1", port: int = 5000,
                max_body: int = DEFAULT_MAX_BODY, request_timeout: float = REQUEST_TIMEOUT, *,
                score_timeout: float = SCORE_TIMEOUT, workers: int = DEFAULT_WORKERS,
                max_concurrency: int = MAX_CONCURRENCY,
                access_log: Callable[[str], None] | None = None) -> RewardServer:
    """A bound, ready-to-serve server (call ``serve_forever``); port 0 picks a free port.

    A port already in use (or a host that cannot be bound) or a missing ``server`` extra is a
    one-line :class:`LmmR1Error`.
    """
    _require_extra()
    for what, v in (("workers", workers), ("max_concurrency", max_concurrency)):
        if v < 1:
            raise LmmR1Error(f"{what} must be >= 1, got {v}")
    for what, v in (("request_timeout", request_timeout), ("score_timeout", score_timeout)):
        if not v > 0:
            raise LmmR1Error(f"{what} must be > 0 seconds, got {v}")
    sock = _bind(host, port)
    return RewardServer(reward, sock, max_body=max_body, request_timeout=request_timeout,
                        score_timeout=score_timeout, workers=workers, max_concurrency=max_concurrency,
                        access_log=access_log)


def serve_in_thread(server: RewardServer, wait: float = 30.0) -> threading.Thread:
    """Run ``server`` in a daemon thread (tests, notebooks); returns once it accepts requests."""
    t = threading.Thread(target=server.serve_forever, daemon=True, name="lmmr1-reward-server")
    t.start()
    deadline = time.monotonic() + wait
    while not server.started and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return t
