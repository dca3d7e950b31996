"""Reward server (LMM-R1 API), the remote-reward client, and `lmmr1 score`."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

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


def test_200_concurrent_requests_all_correct(server):
    port = server.server_address[1]

    def one(i):
        a, b = i % 17, i % 5
        prompt = f"<|im_start|>user\nWhat is {a}+{b}?<|im_end|>\n<|im_start|>assistant\n"
        right = f"<think>{a}+{b}</think><answer>{a + b}</answer>"
        wrong = f"<answer>{a + b + 1}</answer>"
        status, out = _post(port, "/get_reward", {"query": [prompt + right, prompt + wrong],
                                                  "prompts": [prompt, prompt], "labels": [str(a + b)] * 2})
        return i, status, out

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, range(200)))
    assert len(results) == 200 and sorted(i for i, _, _ in results) == list(range(200))
    for _, status, out in results:
        assert status == 200
        assert out["rewards"] == [1.5, 0.0]  # accuracy 1 + format 0.5; wrong answer, no format


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
