"""Reward server (LMM-R1 API), the remote-reward client, and `lmmr1 score`."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lmmr1.errors import LmmR1Error
from lmmr1.rewards import CompositeReward, Sample
from lmmr1.rewards.remote import RemoteReward
from lmmr1.rewards.server import make_server, serve_in_thread


@pytest.fixture(scope="module")
def server():
    reward = CompositeReward(["accuracy", "format"])
    srv = make_server(reward, "127.0.0.1", 0, max_body=64 * 1024)
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()
    reward.close()


def _post(port, path, body, raw=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = raw if raw is not None else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    status, payload = resp.status, json.loads(resp.read() or b"{}")
    conn.close()
    return status, payload


ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
# A CPU-bound custom reward: ~2 s of pure-Python work (it holds the GIL in slices, the worst case for a
# thread pool) on any completion containing SLOW; 0.0 for everything else.
SLOW_REWARD = (
    "import time\n"
    "def slow(samples):\n"
    "    out = []\n"
    "    for s in samples:\n"
    "        if 'SLOW' in s.completion:\n"
    "            t = time.monotonic()\n"
    "            while time.monotonic() - t < 2.0:\n"
    "                sum(range(2000)) + s.completion.count('SLOW', 0, 4096)\n"
    "        out.append(0.0)\n"
    "    return out\n"
)


def start_serve_rewards(tmp_path, *extra):
    """A real ``lmmr1 serve-rewards`` process (format 0.5 + accuracy 1 + the slow reward 0); its port."""
    p = tmp_path / "slow_reward.py"
    p.write_text(SLOW_REWARD)
    proc = subprocess.Popen([sys.executable, "-m", "lmmr1.cli", "serve-rewards", "--port", "0", "--reward",
                             f"[format, accuracy, {{path: {p}, name: slow, timeout: 60}}]", "--weights", "0.5,1,0",
                             *extra], stderr=subprocess.PIPE, text=True, env=ENV)
    line = proc.stderr.readline()
    assert "serving format, accuracy, slow on http://127.0.0.1:" in line, line + proc.stderr.read()
    return proc, int(line.split("http://127.0.0.1:")[1].split()[0])


def stop(proc, sig=signal.SIGINT):
    """Send ``sig``; (exit code, the rest of stderr)."""
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    proc, port = start_serve_rewards(tmp_path_factory.mktemp("served"))
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def _urlpost(port, path, body, timeout=60):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def _health_seconds(port):
    t = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
        assert r.status == 200 and json.loads(r.read())["ok"] is True
    return time.perf_counter() - t


def test_200_concurrent_requests_all_correct(served):
    port = served[1]

    def one(i):
        a, b = i % 17, i % 5
        prompt = f"<|im_start|>user\nWhat is {a}+{b}?<|im_end|>\n<|im_start|>assistant\n"
        right = f"<think>{a}+{b}</think><answer>{a + b}</answer>"
        wrong = f"<answer>{a + b + 1}</answer>"
        status, out = _urlpost(port, "/get_reward", {"query": [prompt + right, prompt + wrong],
                                                     "prompts": [prompt, prompt], "labels": [str(a + b)] * 2})
        return i, status, out

    with ThreadPoolExecutor(max_workers=32) as pool:  # 32 clients at a time, 200 requests in all
        results = list(pool.map(one, range(200)))
    assert sorted(i for i, _, _ in results) == list(range(200))
    for _, status, out in results:
        assert status == 200
        assert out["rewards"] == [1.5, 0.0]  # accuracy 1 + format 0.5; wrong answer, no format


def test_health_answers_within_a_second_while_a_megabyte_completion_is_scored(served):
    port = served[1]
    completion = "<think>" + "SLOW step " * 100_000 + "</think><answer>42</answer>"  # 1 MB
    assert len(completion) > 1_000_000
    box = {}

    def big():
        box["answer"] = _urlpost(port, "/rewards", {"completions": [completion], "answers": ["42"]}, timeout=120)
        box["done"] = time.perf_counter()

    t = threading.Thread(target=big)
    t.start()
    time.sleep(0.5)  # the body is sent and being scored (the slow reward alone takes 2 s)
    waits = []
    for _ in range(3):
        waits.append(_health_seconds(port))
        asked_at = time.perf_counter()
        assert "done" not in box, "the megabyte request finished too soon to show anything"
    t.join(120)
    assert box["done"] > asked_at  # /health was answered while the big request was still being scored
    assert max(waits) < 1.0, waits
    status, out = box["answer"]
    assert status == 200 and out["rewards"] == [1.5]  # the 1 MB completion is scored right, too
    assert out["components"] == {"format": [1.0], "accuracy": [1.0], "slow": [0.0]}


def test_serve_rewards_sigint_finishes_the_request_in_flight_and_exits_0(tmp_path):
    proc, port = start_serve_rewards(tmp_path)
    try:
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("answer", _urlpost(
            port, "/rewards", {"completions": ["SLOW <think>x</think><answer>3</answer>"], "answers": ["3"]})))
        t.start()
        time.sleep(0.7)  # in flight: the slow reward takes 2 s
        code, err = stop(proc, signal.SIGINT)
        t.join(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert box["answer"] == (200, {"rewards": [1.0], "components": {"format": [0.0], "accuracy": [1.0], "slow": [0.0]},
                                   "errors": [None]})
    assert code == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "127.0.0.1 POST /rewards 200 " in err and " 1 samples" in err  # the one-line access log
    with pytest.raises(OSError):  # the port is closed
        _health_seconds(port)


def test_serve_rewards_sigterm_exits_0(tmp_path):
    proc, port = start_serve_rewards(tmp_path, "--no-access-log")
    try:
        assert _health_seconds(port) < 30
        code, err = stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert "GET /health" not in err and "Traceback" not in err  # --no-access-log


def test_chunked_body_over_the_limit_is_413(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    conn.request("POST", "/rewards", body=iter([b"x" * 40_000] * 3), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    assert r.status == 413 and "exceeds the limit of 65536 bytes" in json.loads(r.read())["error"]
    conn.close()


def test_rewards_endpoint_returns_components_and_errors(server):
    status, out = _post(server.server_address[1], "/rewards", {
        "completions": ["<think>a</think><answer>B</answer>", "<answer>4</answer>"],
        "answers": ["B", ""]})
    assert status == 200
    assert out["rewards"] == [1.5, None]
    assert out["components"]["format"] == [1.0, 0.0]
    assert out["errors"][0] is None and "empty gold" in out["errors"][1]


@pytest.mark.parametrize(
    "path, body, raw, status, fragment",
    [
        ("/get_reward", None, b"{not json", 400, "not valid JSON"),
        ("/get_reward", [1, 2], None, 400, "JSON object"),
        ("/get_reward", {"query": ["a"]}, None, 400, "missing field 'labels'"),
        ("/get_reward", {"query": ["a", "b"], "labels": ["1"]}, None, 400, "expected 2"),
        ("/rewards", {"completions": "x", "answers": []}, None, 400, "must be a list"),
        ("/nowhere", {}, None, 404, "no route"),
        ("/get_reward", None, b"x" * (70 * 1024), 413, "exceeds the limit"),
    ],
)
def test_malformed_requests_get_4xx_with_a_message(server, path, body, raw, status, fragment):
    got, out = _post(server.server_address[1], path, body, raw=raw)
    assert got == status and fragment in out["error"]


def test_remote_reward_client_uses_the_server(server):
    r = RemoteReward(f"http://127.0.0.1:{server.server_address[1]}/get_reward")
    assert r([Sample("<think>x</think><answer>7</answer>", "7", prompt="P"), Sample("no", "7")]) == [1.5, 0.0]
    dead = RemoteReward("http://127.0.0.1:9/get_reward", retries=1, backoff=0.01, timeout=2)
    with pytest.raises(LmmR1Error, match="failed 2 times"):
        dead([Sample("x", "1")])
    composite = CompositeReward([{"url": f"http://127.0.0.1:{server.server_address[1]}/get_reward", "name": "srv"}])
    assert composite([Sample("<think>x</think><answer>2</answer>", "2")]).components == {"srv": [1.5]}


def test_score_cli(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [
        {"id": 1, "completion": "<think>x</think><answer>\\frac{1}{2}</answer>", "answer": "0.5", "datasource": "m"},
        {"id": 2, "completion": "<answer>B</answer>", "answer": "(B)"},
        {"id": 3, "completion": "<think>x</think><answer>3</answer>", "answer": ""},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\nnot json\n" + json.dumps(rows[2]) + "\n")
    out = tmp_path / "out.jsonl"
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "score", str(src), "--reward", "format,accuracy",
                          "--weights", "0.5,1.0", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 4  # one output line per input line, none lost
    assert lines[0]["rewards"] == {"format": 1.0, "accuracy": 1.0} and lines[0]["reward"] == 1.5
    assert lines[0]["datasource"] == "m" and lines[0]["id"] == 1  # input fields kept
    assert lines[1]["rewards"] == {"format": 0.0, "accuracy": 1.0} and lines[1]["reward"] == 1.0
    assert lines[2]["error"].endswith("in.jsonl:3: invalid JSON (Expecting value)")
    assert "in.jsonl:4: accuracy: empty gold answer" in lines[3]["error"]
    assert "error rows: 2" in res.stderr and "format" in res.stderr
    missing = subprocess.run([sys.executable, "-m", "lmmr1.cli", "score", str(tmp_path / "none.jsonl")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "cannot read" in missing.stderr


def test_serve_rewards_without_the_server_extra_is_one_line():
    code = ("import sys; sys.modules['uvicorn'] = None\nfrom lmmr1.cli import main\n"
            "sys.exit(main(['serve-rewards', '--reward', 'format', '--port', '0']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "needs starlette and uvicorn (uvicorn is missing): pip install 'lmmr1[server]'" in res.stderr.replace("\n", "")
