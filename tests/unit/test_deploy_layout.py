"""Which validated layout deploy's replicas serve (ladder.deploy.replica_layout), how many (capacity_problem)
and when the scaler adds one (Controller.scale)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ladder.deploy import Controller, DeployError, Paths, capacity_problem, replica_layout

pytestmark = pytest.mark.unit

SINGLE = {"tensor_parallel_size": 2, "pipeline_parallel_size": 1}
MULTI = {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}


def results(tmp_path: Path, proxy: bool = False, multinode: bool = True) -> Path:
    for stage, plan in (("single", SINGLE), ("multinode", MULTI)):
        if stage == "multinode" and not multinode:
            continue
        meta = {"plan": plan} | ({"proxy": {"layers": 75, "of": 80}} if stage == "single" and proxy else {})
        (tmp_path / stage).mkdir(parents=True, exist_ok=True)
        (tmp_path / stage / "bench.json").write_text(json.dumps({"metadata": meta}))
    return tmp_path


def test_auto_serves_single_when_the_model_fits_one_node(tmp_path: Path) -> None:
    lay = replica_layout(results(tmp_path), "auto")
    assert lay["stage"] == "single" and (lay["tensor_parallel_size"], lay["pipeline_parallel_size"]) == (2, 1)
    assert lay["validated_by"] == "results/single/verdict.json"


def test_auto_serves_multinode_when_single_served_a_proxy(tmp_path: Path) -> None:
    lay = replica_layout(results(tmp_path, proxy=True), "auto")
    assert lay["stage"] == "multinode" and lay["pipeline_parallel_size"] == 2


def test_multinode_asked_for_explicitly(tmp_path: Path) -> None:
    assert replica_layout(results(tmp_path), "multinode")["pipeline_parallel_size"] == 2


def test_a_layout_that_was_not_validated_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="results/multinode/bench.json"):
        replica_layout(results(tmp_path, proxy=True, multinode=False), "auto")


def test_replicas_beyond_the_usable_nodes_are_refused_naming_the_key() -> None:
    nodes = ["n1", "n2", "n3"]
    assert capacity_problem(3, SINGLE, nodes) is None
    assert capacity_problem(1, MULTI, ["n1", "n2"]) is None
    problem = capacity_problem(2, MULTI, nodes)
    assert problem and problem.startswith("deploy.replicas=2: 4 node(s) needed (2 per replica)")
    assert "3 usable" in problem
    assert capacity_problem(4, SINGLE, nodes)
    assert capacity_problem(9, SINGLE, []) is None  # sinfo listed nothing: Slurm's own pending watch decides


def scaler(tmp_path: Path, after_s: float = 4) -> Controller:
    paths = Paths(tmp_path / "results")
    paths.dir.mkdir(parents=True)
    paths.state.write_text(json.dumps({"target": 1, "replicas": {"7": {"state": "serving"}}}))
    return Controller(paths, {"deploy": {"scale_up_waiting": 2, "scale_up_after_s": after_s, "max_replicas": 2,
                                         "min_replicas": 1, "scale_down_idle_s": 3600}})


def test_scaler_adds_a_replica_when_the_queue_stays_deep_on_average(tmp_path, monkeypatch):
    """Samples every second, the gauge dipping to 0 now and then (a request ended, its client not yet
    back): the window's mean stays above 2, so one replica is added after 4 s, and one only."""
    c = scaler(tmp_path)
    clock = iter(range(100))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    for waiting in [6, 0, 6, 6, 0, 6, 6]:
        c.scale([{"num_requests_waiting": waiting, "num_requests_running": 2}])
    ups = [e for e in map(json.loads, c.paths.events.read_text().splitlines()) if e["event"] == "scale_up"]
    assert [e["replicas"] for e in ups] == [2] and c.state["target"] == 2
    assert c.state["load"] == {"sampled": 1, "serving": 1, "waiting_per_replica": 6, "window_mean": 6.0}


def test_scaler_waits_out_a_short_burst_and_a_shallow_queue(tmp_path, monkeypatch):
    c = scaler(tmp_path)
    clock = iter(range(100))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    for waiting in [6, 6, 0, 0, 0, 1, 1, 1, 1, 1, 1]:  # 2 s deep, then below 2 on average
        c.scale([{"num_requests_waiting": waiting, "num_requests_running": 2}])
    assert c.state["target"] == 1 and not c.paths.events.exists()
