"""ladder.probe summarize: node count, GPU count, one address and hostname per node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ladder.probe import primary_ipv4, summarize
from ladder.verdict import Verdict

pytestmark = pytest.mark.unit


def node(name: str, ip: str | None, gpus: int = 0, host: str | None = None) -> dict:
    nics = [{"name": "lo", "up": True, "ipv4": ["127.0.0.1"]}]
    if ip:
        nics.append({"name": "eth0", "up": True, "ipv4": [ip]})
    return {"hostname": host or name, "slurm_node": name, "nics": nics, "cpu": {"affinity": 2},
            "gpus": {"kind": "nvidia" if gpus else "cpu-only", "count": gpus, "devices": []}}


def write(d: Path, *nodes: dict) -> Path:
    d.mkdir(exist_ok=True)
    for n in nodes:
        (d / f"{n['slurm_node']}.json").write_text(json.dumps(n))
    return d


def failed(v: Verdict) -> list[str]:
    return [c.name for c in v.failed]


def test_all_nodes_pass(tmp_path):
    v = Verdict("probe")
    nodes = summarize(write(tmp_path / "n", node("n1", "10.0.0.11"), node("n2", "10.0.0.12")),
                      ["n1", "n2"], 0, v)
    assert [n["slurm_node"] for n in nodes] == ["n1", "n2"]
    assert failed(v) == []
    assert v.finish(tmp_path / "v.json") == 0


def test_missing_node_fails(tmp_path):
    v = Verdict("probe")
    summarize(write(tmp_path / "n", node("n1", "10.0.0.11")), ["n1", "n2"], 0, v)
    assert failed(v) == ["nodes_reported"]
    assert "missing: n2" in v.failed[0].detail


def test_gpu_count_mismatch_fails(tmp_path):
    v = Verdict("probe")
    summarize(write(tmp_path / "n", node("n1", "10.0.0.11", gpus=8), node("n2", "10.0.0.12", gpus=7)),
              ["n1", "n2"], 8, v)
    assert failed(v) == ["n2:gpus"]


def test_shared_address_and_hostname_fail(tmp_path):
    v = Verdict("probe")
    summarize(write(tmp_path / "n", node("n1", "10.0.0.11", host="box"), node("n2", "10.0.0.11", host="box")),
              ["n1", "n2"], 0, v)
    assert failed(v) == ["distinct_addresses", "distinct_hostnames"]


def test_node_without_address_fails(tmp_path):
    v = Verdict("probe")
    summarize(write(tmp_path / "n", node("n1", None)), ["n1"], 0, v)
    assert "n1:address" in failed(v)


def test_primary_ipv4_skips_loopback_and_down_links():
    n = node("n1", None)
    n["nics"] += [{"name": "eth1", "up": False, "ipv4": ["10.1.1.1"]},
                  {"name": "ib0", "up": True, "ipv4": ["10.2.2.2"]}]
    assert primary_ipv4(n) == "10.2.2.2"
    assert primary_ipv4(node("n1", None)) is None
