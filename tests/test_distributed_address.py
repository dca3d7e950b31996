"""`distributed.address`: a cluster that is not there is one clear line, fast (Ray alone retries an
unreachable address for minutes and reports a missing `auto` cluster with a traceback)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmmr1.errors import LmmR1Error
from lmmr1.trainer.config import ConfigError, load_config

SMOKE = Path(__file__).resolve().parent.parent / "recipes" / "smoke.yaml"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize("address", ["http://head:6379", "head", "head:port", "10.0.0.1:6379/x", "ray://head"])
def test_a_malformed_address_is_a_config_error_naming_the_field(address):
    with pytest.raises(ConfigError, match=r"distributed\.address.*auto, HOST:PORT or ray://HOST:PORT"):
        load_config(SMOKE, [f"distributed.address={address}", "distributed.train_workers=2"]).validate()


@pytest.mark.parametrize("address", ["auto", "10.1.2.3:6379", "ray://head-node.cluster.local:10001", "'[::1]:6379'"])
def test_well_formed_addresses_are_accepted(address):
    cfg = load_config(SMOKE, [f"distributed.address={address}"])
    cfg.validate()
    assert cfg.distributed.address == address.strip("'")


def test_an_override_that_is_not_yaml_says_how_to_quote_it():
    with pytest.raises(ConfigError, match=r"override 'distributed.address=\[::1\]:6379': the value is not valid YAML "
                                          r"\(.*\); quote it, e.g. distributed.address='\[::1\]:6379'"):
        load_config(SMOKE, ["distributed.address=[::1]:6379"])


def test_an_unreachable_cluster_fails_in_one_line_before_ray_retries():
    pytest.importorskip("ray")
    from lmmr1.distributed.ray_executor import _connect

    port = closed_port()
    with pytest.raises(LmmR1Error, match=rf"distributed.address=127.0.0.1:{port}: no Ray cluster answers at "
                                         rf"127.0.0.1:{port} \(.*\); start one with `ray start --head`"):
        _connect(None, f"127.0.0.1:{port}")  # refused before Ray is asked


def test_a_ray_init_failure_becomes_one_line():
    from lmmr1.distributed.ray_executor import _connect

    class NoCluster:  # what ray.init raises for `auto` when no cluster runs on this node
        def init(self, **kwargs):
            raise ConnectionError("Could not find any running Ray instance. Please specify the one\nto connect to")

    with pytest.raises(LmmR1Error, match=r"^distributed.address=auto: could not join the Ray cluster "
                                         r"\(Could not find any running Ray instance. Please specify the one\)$"):
        _connect(NoCluster(), "auto")


def test_the_command_line_says_it_in_one_line_and_exits_2(tmp_path, tiny_vlm):
    pytest.importorskip("ray")
    port = closed_port()
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "train", str(SMOKE), f"output_dir={tmp_path / 'run'}",
                          f"model.path={tiny_vlm}", "distributed.train_workers=2",
                          f"distributed.address=127.0.0.1:{port}"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"error: distributed.address=127.0.0.1:{port}: no Ray cluster answers" in res.stderr
    assert time.time() - t0 < 240  # not Ray's minutes of retries
