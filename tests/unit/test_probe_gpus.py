"""ladder.probe on hosts whose GPUs are split between jobs/nodes: what the job can use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ladder.monitor import visible_indices
from ladder.probe import summarize
from ladder.verdict import Verdict

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("cvd", "count", "want"), [
    (None, 4, [0, 1, 2, 3]),      # no restriction: every GPU of the host
    ("2,3", 4, [2, 3]),
    ("0", 4, [0]),
    ("", 4, []),
    ("7", 4, []),                 # no such GPU
    ("GPU-abc", 4, []),           # UUIDs are matched by the caller
])
def test_visible_indices(cvd, count, want):
    assert visible_indices(cvd, count) == want


def gpu_node(name: str, ip: str, uuids: list[str]) -> dict:
    return {"hostname": name, "slurm_node": name, "cpu": {"affinity": 2},
            "nics": [{"name": "eth0", "up": True, "ipv4": [ip]}],
            "gpus": {"kind": "nvidia", "count": len(uuids), "host_count": 4, "visible_uuids": uuids,
                     "devices": []}}


def run(tmp_path: Path, *nodes: dict) -> Verdict:
    d = tmp_path / "nodes"
    d.mkdir()
    for n in nodes:
        (d / f"{n['slurm_node']}.json").write_text(json.dumps(n))
    v = Verdict("probe")
    summarize(d, [n["slurm_node"] for n in nodes], 2, v)
    return v


def test_each_node_its_own_gpus(tmp_path):
    v = run(tmp_path, gpu_node("n1", "10.0.0.11", ["G0", "G1"]), gpu_node("n2", "10.0.0.12", ["G2", "G3"]))
    assert [c.name for c in v.failed] == []
    assert next(c for c in v.checks if c.name == "distinct_gpus").value == 4


def test_two_nodes_on_the_same_gpus_fail(tmp_path):
    v = run(tmp_path, gpu_node("n1", "10.0.0.11", ["G0", "G1"]), gpu_node("n2", "10.0.0.12", ["G0", "G1"]))
    assert [c.name for c in v.failed] == ["distinct_gpus"]
    assert "G0" in v.failed[0].detail
