"""Bad inputs and faults around rewards: each gives one clear line (or the right handling), never a hang.

Time bounds here are generous "did not hang" bounds (20 s for work that takes milliseconds when
linear), never speed assertions.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lmmr1.errors import LmmR1Error
from lmmr1.rewards import CompositeReward, RewardConfigError, RewardError, Sample, check_rewards
from lmmr1.rewards.answer import MAX_COMPLETION_CHARS
from lmmr1.rewards.compose import parse_cli_rewards
from lmmr1.rewards.remote import RemoteReward
from lmmr1.rewards.server import make_server, serve_in_thread

HANG_BOUND = 20.0  # seconds; the linear work takes well under one
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "lmmr1.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr  # one line, no traceback
    return lines[0]


def rows(*sources):
    return [Sample(f"<think>t</think><answer>{i}</answer>", str(i), prompt="Q", source=src)
            for i, src in enumerate(sources)]


@pytest.fixture
def rfile(tmp_path):
    def write(code: str, name: str = "r.py") -> Path:
        p = tmp_path / name
        p.write_text(code)
        return p
    return write


def within(fn, bound=HANG_BOUND):
    """fn()'s result, asserting it returned within ``bound`` seconds (run on a thread so a hang fails)."""
    box = {}

    def run():
        try:
            box["v"] = fn()
        except BaseException as e:  # noqa: BLE001  (re-raised in the test's thread)
            box["e"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(bound)
    assert not t.is_alive(), f"did not finish within {bound} s"
    if "e" in box:
        raise box["e"]
    return box["v"]


# ------------------------------------------------------------------ custom reward files
def test_reward_file_missing(tmp_path):
    with pytest.raises(RewardConfigError, match=r"custom reward file .*nope\.py does not exist$"):
        CompositeReward([{"path": str(tmp_path / "nope.py"), "name": "f"}])


def test_reward_file_with_syntax_error_names_file_and_line(rfile):
    p = rfile("def f(samples):\n    return [1.0 for s in samples\n")
    with pytest.raises(RewardConfigError, match=rf"^custom reward file {p}:2: syntax error: "):
        CompositeReward([{"path": str(p), "name": "f"}])


def test_reward_file_failing_at_import(rfile):
    p = rfile("import no_such_module_xyz\n")
    with pytest.raises(RewardConfigError, match="importing custom reward file .* failed: ModuleNotFoundError: "
                                                "No module named 'no_such_module_xyz'"):
        CompositeReward([{"path": str(p), "name": "f"}])


def test_reward_function_name_missing_lists_the_functions(rfile):
    p = rfile("import math\ndef good(samples):\n    return [1.0] * len(samples)\n")
    with pytest.raises(RewardConfigError, match=r"has no function 'god'; functions found: good$"):
        CompositeReward([{"path": str(p), "name": "god"}])
    with pytest.raises(RewardConfigError, match="give the function with 'name'"):
        CompositeReward([{"path": str(p)}])


def test_unrecognised_signature_and_unknown_option(rfile):
    p = rfile("def two(a, b):\n    return []\ndef one(samples):\n    return [1.0] * len(samples)\n"
              "def kw(*, samples):\n    return []\n")
    with pytest.raises(RewardConfigError, match=r"custom reward two .*: parameter\(s\) \['b'\] have no value"):
        CompositeReward([{"path": str(p), "name": "two"}])
    with pytest.raises(RewardConfigError, match="unrecognised signature"):
        CompositeReward([{"path": str(p), "name": "kw"}])
    with pytest.raises(RewardConfigError, match=r"custom reward one .* takes no option\(s\) \['scale'\]"):
        CompositeReward([{"path": str(p), "name": "one", "kwargs": {"scale": 2}}])


def test_reward_that_raises_names_function_and_row(rfile):
    p = rfile("def boom(samples):\n"
              "    return [1 / 0 if s.answer == '1' else 1.0 for s in samples]\n")
    c = CompositeReward([{"path": str(p), "name": "boom"}])
    with pytest.raises(RewardError) as e:
        c(rows("d.jsonl:1", "d.jsonl:2", "d.jsonl:3"))
    assert str(e.value) == f"custom reward boom ({p}) raised ZeroDivisionError: division by zero on row 1 (d.jsonl:2)"


@pytest.mark.parametrize("bad", ["float('nan')", "float('inf')", "-float('inf')"])
def test_reward_returning_non_finite_is_an_error_never_trained_on(rfile, bad):
    p = rfile(f"def f(samples):\n    return [1.0, {bad}]\n")
    with pytest.raises(RewardError) as e:
        CompositeReward([{"path": str(p), "name": "f"}])(rows("d.jsonl:4", "d.jsonl:9"))
    value = float(eval(bad))  # noqa: S307 (test constant)
    assert str(e.value).startswith(f"custom reward f ({p}) returned {value} for row 1 (d.jsonl:9); "
                                   "a reward must be a finite number")
    assert not math.isfinite(value)


def test_reward_returning_wrong_length(rfile):
    p = rfile("def f(samples):\n    return [1.0]\n")
    with pytest.raises(RewardError, match=r"custom reward f .* returned 1 values for 2 samples"):
        CompositeReward([{"path": str(p), "name": "f"}])(rows("a:1", "a:2"))


@pytest.mark.parametrize("ret, shown", [("'0.5'", "'0.5' (a str)"), ("[1.0]", "'[1.0]' (a list)"),
                                        ("object()", "(a object)")])
def test_reward_returning_a_non_number(rfile, ret, shown):
    p = rfile(f"def f(samples):\n    return [{ret} for _ in samples]\n")
    with pytest.raises(RewardError) as e:
        CompositeReward([{"path": str(p), "name": "f"}])(rows("a.jsonl:3"))
    assert shown in str(e.value) and "for row 0 (a.jsonl:3); a reward is a number or None" in str(e.value)


def test_reward_returning_a_scalar_instead_of_a_list(rfile):
    p = rfile("def f(samples):\n    return 1.0\n")
    with pytest.raises(RewardError, match="returned a float, not a list of values for 1 samples"):
        CompositeReward([{"path": str(p), "name": "f"}])(rows("a:1"))


def test_hanging_reward_times_out_with_an_error_naming_it(rfile):
    p = rfile("import threading\ndef hang(samples):\n    threading.Event().wait()\n")
    c = CompositeReward([{"path": str(p), "name": "hang", "timeout": 0.5}])
    t0 = time.monotonic()
    with pytest.raises(RewardError) as e:
        within(lambda: c(rows("d.jsonl:5", "d.jsonl:6")))
    assert time.monotonic() - t0 < HANG_BOUND
    assert str(e.value).startswith(f"custom reward hang ({p}) did not return within 0.5 s on a batch of 2 rows "
                                   "(first: d.jsonl:5)")


def test_reward_raising_on_the_batch_and_hanging_per_row_still_answers(rfile):
    """Naming the failing row re-tries rows one by one; that search is bounded too."""
    p = rfile("import threading\ndef f(samples):\n    if len(samples) > 1:\n        raise ValueError('batch')\n"
              "    threading.Event().wait()\n")
    c = CompositeReward([{"path": str(p), "name": "f", "timeout": 0.5}])
    with pytest.raises(RewardError) as e:
        within(lambda: c(rows("d:1", "d:2", "d:3")))
    assert str(e.value) == f"custom reward f ({p}) raised ValueError: batch on a batch of 3 rows (first: d:1)"


def test_broken_reward_is_found_by_the_check_before_any_scoring(rfile):
    p = rfile("def f(samples):\n    return [s.fields['no_such_field'] for s in samples]\n")
    with pytest.raises(RewardConfigError) as e:
        check_rewards(["format", {"path": str(p), "name": "f"}])
    assert str(e.value).startswith(f"custom reward f ({p}) raised KeyError: 'no_such_field' on row 0 (check sample)")
    assert "checked on a sample before training" in str(e.value)


def test_trainer_checks_rewards_before_loading_the_model(tmp_path, rfile):
    """A broken reward file fails the run before the model path is even looked at."""
    from lmmr1.trainer.config import load_config
    from lmmr1.trainer.trainer import Trainer

    p = rfile("def f(samples):\n    return ['x' for _ in samples]\n")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"message": "hi", "answer": "1"}) + "\n")
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"model.path={tmp_path / 'no_model_here'}",
                             f"data=[{{path: {data}}}]", f"reward=[{{path: {p}, name: f, timeout: 5}}]"])
    with pytest.raises(RewardConfigError, match=r"custom reward f .* returned 'x' \(a str\) for row 0"):
        Trainer(cfg)


@pytest.mark.parametrize("spec, fragment", [
    ({"name": "format", "timeout": 3}, "'timeout' applies to custom (path) and remote (url) rewards"),
    ({"path": "x.py", "name": "f", "timeout": -1}, "timeout must be >= 0 seconds"),
    ({"name": "format", "weight": "heavy"}, "weight must be a number, got 'heavy'"),
    ({"name": "format", "kwargs": [1]}, "kwargs must be a mapping"),
    ({"name": "fromat"}, "unknown reward 'fromat'; did you mean 'format'?"),
])
def test_bad_reward_specs(spec, fragment):
    with pytest.raises(RewardConfigError) as e:
        CompositeReward([spec])
    assert fragment in str(e.value)


def test_cli_weights_count_mismatch_and_bad_yaml():
    with pytest.raises(RewardConfigError, match=r"^--weights has 1 values for 2 rewards \(format, accuracy\)$"):
        parse_cli_rewards("format,accuracy", "0.5")
    with pytest.raises(RewardConfigError, match="--weights must be numbers"):
        parse_cli_rewards("format", "x")
    with pytest.raises(RewardConfigError, match="is not valid YAML"):
        parse_cli_rewards("{path: [", None)


# ------------------------------------------------------------------ remote rewards
def test_remote_url_refusing_names_the_url():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/get_reward"
    with pytest.raises(RewardError, match=rf"^reward server {url} failed 1 times; last error: cannot connect"):
        RemoteReward(url, retries=0)(rows("a:1"))


class _FakeServer:
    """A socket server answering every request with fixed bytes (or never, if ``reply`` is None)."""

    def __init__(self, reply: bytes | None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.reply, self.conns = reply, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.recv(65536)
            if self.reply is not None:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(self.reply)).encode() + b"\r\nConnection: close\r\n\r\n" + self.reply)
                conn.close()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("reply, fragment", [
    (b"<html>oops</html>", "answered with invalid JSON"),
    (b'{"rewards": [1.0, NaN]}', "returned nan for row 1 (a:2)"),
    (b'{"score": [1.0, 0.0]}', "returned an object without 'rewards'"),
    (b'{"rewards": [1.0]}', "returned 1 values for 2 samples"),
])
def test_remote_bad_answers_are_errors_naming_the_url(reply, fragment):
    srv = _FakeServer(reply)
    url = f"http://127.0.0.1:{srv.port}/get_reward"
    try:
        with pytest.raises(RewardError) as e:
            within(lambda: RemoteReward(url, retries=0, timeout=5)(rows("a:1", "a:2")))
    finally:
        srv.close()
    assert str(e.value).startswith(f"reward server {url} ") and fragment in str(e.value)


def test_remote_server_that_never_answers_times_out():
    srv = _FakeServer(None)
    url = f"http://127.0.0.1:{srv.port}/get_reward"
    try:
        with pytest.raises(RewardError) as e:
            within(lambda: CompositeReward([{"url": url, "timeout": 0.5, "kwargs": {"retries": 1, "backoff": 0.01}}])(
                rows("a:1")))
    finally:
        srv.close()
    assert str(e.value) == f"reward server {url} failed 2 times; last error: no answer within 0.5 s (timeout)"


# ------------------------------------------------------------------ huge completions: linear, bounded
PATHOLOGICAL = {
    "unclosed answer tags": "<answer>" * (1_000_000 // 8),  # quadratic under <answer>(.*?)</answer>
    "digits after a bracket": "<think>t</think><answer>[" + "1" * 1_000_000 + "</answer>",  # cubic box regex
    "spaces before a degree": "<think>t</think><answer>1" + " " * 1_000_000 + "x°</answer>",
    "long thinking": "<think>" + "x" * 1_000_000 + "</think><answer>2</answer>",
}


@pytest.mark.parametrize("kind", sorted(PATHOLOGICAL))
def test_one_megabyte_completion_scores_without_hanging(kind):
    reward = CompositeReward(["format", {"name": "accuracy", "kwargs": {"timeout": 2.0}}, "iou"])
    try:
        res = within(lambda: reward([Sample(PATHOLOGICAL[kind], "2"), Sample(PATHOLOGICAL[kind], "[0, 0, 1, 1]")]))
    finally:
        reward.close()
    expect_format = 0.0 if kind == "unclosed answer tags" else 1.0
    assert res.components["format"] == [expect_format, expect_format]
    assert res.components["accuracy"][0] == (1.0 if kind == "long thinking" else 0.0)
    assert res.errors[0] is not None and "iou: gold answer '2' is not a box" in res.errors[0]
    assert res.components["iou"][1] == 0.0


def test_four_megabyte_completion_is_a_format_failure_not_a_hang():
    big = "<think>" + "x" * (4 * 1024 * 1024) + "</think><answer>2</answer>"
    assert len(big) > MAX_COMPLETION_CHARS
    reward = CompositeReward(["format", "accuracy"])
    try:
        res = within(lambda: reward([Sample(big, "2"), Sample("<answer>" * (4 * 1024 * 1024 // 8), "2")]))
    finally:
        reward.close()
    assert res.components == {"format": [0.0, 0.0], "accuracy": [0.0, 0.0]} and res.errors == [None, None]


def test_score_cli_on_a_one_megabyte_completion(tmp_path):
    src = tmp_path / "big.jsonl"
    src.write_text(json.dumps({"completion": PATHOLOGICAL["unclosed answer tags"], "answer": "2"}) + "\n"
                   + json.dumps({"completion": "<think>t</think><answer>2</answer>", "answer": "2"}) + "\n")
    res = cli("score", src, "--out", tmp_path / "o.jsonl", timeout=90)
    assert res.returncode == 0, res.stderr
    out = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [o["reward"] for o in out] == [0.0, 1.5]


# ------------------------------------------------------------------ the HTTP server
@pytest.fixture
def server(rfile):
    p = rfile("def boom(samples):\n    raise RuntimeError('reward backend down')\n", "boom.py")
    reward = CompositeReward(["format"])
    srv = make_server(reward, "127.0.0.1", 0, max_body=2 * 1024 * 1024, request_timeout=1.0)
    serve_in_thread(srv)
    broken = CompositeReward([{"path": str(p), "name": "boom"}])
    srv2 = make_server(broken, "127.0.0.1", 0)
    serve_in_thread(srv2)
    yield srv, srv2
    for s in (srv, srv2):
        s.shutdown()
        s.server_close()
    reward.close()


def raw_request(port: int, head: bytes, body: bytes = b"", wait: float = HANG_BOUND) -> bytes:
    """Send raw bytes; everything the server answers until it closes (or ``wait`` runs out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head + body)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b'"error"' in b"".join(chunks):
                    break
        except TimeoutError:
            pytest.fail(f"the server did not answer within {wait} s")
        return b"".join(chunks)


@pytest.mark.parametrize("length, status, fragment", [  # malformed values never reach the app: uvicorn's parser
    ("-1", 400, b"Invalid HTTP request received"),
    ("-999999", 400, b"Invalid HTTP request received"),
    ("ten", 400, b"Invalid HTTP request received"),
    ("99999999999999999999", 413, b"exceeds the limit"),
])
def test_bad_content_length_is_answered_at_once(server, length, status, fragment):
    head = (f"POST /rewards HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()
    answer = raw_request(server[0].server_address[1], head, b'{"completions": [')  # connection left open
    assert answer.startswith(f"HTTP/1.0 {status}".encode()) or answer.startswith(f"HTTP/1.1 {status}".encode())
    assert fragment in answer


def test_non_json_and_oversized_bodies(server):
    port = server[0].server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_BOUND)
    conn.request("POST", "/rewards", body=b"\xff\xfe not json")
    r = conn.getresponse()
    assert r.status == 400 and "body is not valid JSON" in json.loads(r.read())["error"]
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_BOUND)
    conn.putrequest("POST", "/rewards")
    conn.putheader("Content-Length", str(3 * 1024 * 1024))
    conn.endheaders()  # the body is never sent: the limit is checked on the header alone
    r = conn.getresponse()
    assert r.status == 413 and "exceeds the limit of 2097152" in json.loads(r.read())["error"]
    conn.close()


def test_short_body_client_is_dropped_and_others_are_served(server):
    port = server[0].server_address[1]
    head = b"POST /rewards HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_BOUND) as s:
        s.sendall(head + b'{"compl')  # 7 of the 100 bytes, then silence
        ok = _health(port)
        answer = b""
        while chunk := s.recv(4096):  # answered 408, then closed, after the server's 1 s request timeout
            answer += chunk
    assert ok
    assert answer.startswith(b"HTTP/1.1 408") and b"request body not received within 1 s" in answer


def _health(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_BOUND)
    conn.request("GET", "/health")
    ok = conn.getresponse().status == 200
    conn.close()
    return ok


def test_megabyte_request_does_not_freeze_other_requests(server):
    port = server[0].server_address[1]
    body = json.dumps({"completions": [PATHOLOGICAL["unclosed answer tags"]], "answers": ["1"]}).encode()

    def big():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_BOUND)
        conn.request("POST", "/rewards", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())

    status, out = within(big)
    assert status == 200 and out["rewards"] == [0.0]
    assert within(lambda: _health(port))


def test_failing_reward_answers_500_with_the_one_line_error(server):
    port = server[1].server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_BOUND)
    conn.request("POST", "/rewards", body=json.dumps({"completions": ["x"], "answers": ["1"]}))
    r = conn.getresponse()
    err = json.loads(r.read())["error"]
    assert r.status == 500 and err.startswith("custom reward boom (") and err.endswith(
        "raised RuntimeError: reward backend down on row 0 of the batch")


def test_port_in_use_is_one_line(server):
    port = server[0].server_address[1]
    reward = CompositeReward(["format"])
    with pytest.raises(LmmR1Error, match=rf"^port {port} on 127.0.0.1 is already in use"):
        make_server(reward, "127.0.0.1", port)
    res = cli("serve-rewards", "--reward", "format", "--port", port, timeout=60)
    assert res.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in one_line(res.stderr)


# ------------------------------------------------------------------ lmmr1 score CLI
def test_score_out_into_missing_folder_is_created(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"completion": "<think>t</think><answer>2</answer>", "answer": "2"}) + "\n")
    out = tmp_path / "new" / "deeper" / "o.jsonl"
    res = cli("score", src, "--reward", "format", "--out", out)
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["rewards"] == {"format": 1.0}
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    res = cli("score", src, "--reward", "format", "--out", blocker / "o.jsonl")
    assert res.returncode == 2 and f"--out {blocker / 'o.jsonl'}: cannot write there" in one_line(res.stderr)


def test_score_cli_errors_are_one_line(tmp_path, rfile):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"completion": "x", "answer": "2"}) + "\n")
    nan_file = rfile("def f(samples):\n    return [float('nan')] * len(samples)\n")
    cases = [
        (["--reward", "fromat"], "unknown reward 'fromat'; did you mean 'format'?"),
        (["--reward", "format,accuracy", "--weights", "1"], "--weights has 1 values for 2 rewards"),
        (["--reward", f"{tmp_path / 'nope.py'}:f"], "does not exist"),
        (["--reward", f"{nan_file}:f"], "returned nan for row 0 (check sample)"),
    ]
    for args, fragment in cases:
        res = cli("score", src, *args)
        assert res.returncode == 2, (args, res.stderr)
        assert fragment in one_line(res.stderr), (args, res.stderr)


def test_score_cli_takes_custom_files_with_kwargs(tmp_path, rfile):
    p = rfile("def scaled(samples, scale):\n    return [scale * len(s.completion) for s in samples]\n"
              "def trl(completions, solution, **kw):\n    return [float(c == s) for c, s in zip(completions, solution)]\n")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"completion": "abc", "answer": "2", "solution": "abc"}) + "\n")
    out = tmp_path / "o.jsonl"
    res = cli("score", src, "--reward", f"{{path: {p}, name: scaled, kwargs: {{scale: 2}}, timeout: 10}}",
              "--reward", f"{p}:trl", "--weights", "1,10", "--out", out)
    assert res.returncode == 0, res.stderr
    row = json.loads(out.read_text())
    assert row["rewards"] == {"scaled": 6.0, "trl": 1.0} and row["reward"] == 16.0


def test_nan_reward_in_training_stops_the_run_before_any_update(tmp_path, tiny_vlm, rfile):
    """A NaN reward used to be trained on (and the failure blamed on the learning rate)."""
    from lmmr1.trainer.trainer import Trainer
    from tests.test_trainer import make_cfg, read_metrics

    p = rfile("def nan(samples):\n    return [float('nan') if i == 1 else 1.0 for i, _ in enumerate(samples)]\n")
    trainer = Trainer(make_cfg(tmp_path, tiny_vlm, f"reward=[{{path: {p}, name: nan}}]", "train.steps=2"))
    before = {k: v.clone() for k, v in trainer.policy.model.named_parameters()}
    with pytest.raises(RewardError, match=rf"^custom reward nan \({p}\) returned nan for row 1"):
        trainer.train()
    assert all(v.equal(before[k]) for k, v in trainer.policy.model.named_parameters())
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or read_metrics(tmp_path / "run") == []


def test_serve_rewards_cli_serves_a_custom_file_with_kwargs(rfile):
    p = rfile("def scaled(samples, scale):\n    return [scale * len(s.completion) for s in samples]\n")
    proc = subprocess.Popen([sys.executable, "-m", "lmmr1.cli", "serve-rewards", "--port", "0", "--reward",
                             f"[format, {{path: {p}, name: scaled, kwargs: {{scale: 0.5}}}}]", "--weights", "1,1"],
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = within(proc.stderr.readline, 60)
        assert "serving format, scaled on http://127.0.0.1:" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_BOUND)
        conn.request("POST", "/rewards", body=json.dumps({"completions": ["<think>a</think><answer>b</answer>"],
                                                          "answers": ["b"]}))
        out = json.loads(conn.getresponse().read())
        conn.close()
        assert out["components"] == {"format": [1.0], "scaled": [17.0]} and out["rewards"] == [18.0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
