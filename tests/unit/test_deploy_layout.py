"""Which validated layout deploy's replicas serve (ladder.deploy.replica_layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ladder.deploy import DeployError, capacity_problem, replica_layout

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
