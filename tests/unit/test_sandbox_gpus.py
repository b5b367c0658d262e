"""The sandbox's GPU split: each node's CUDA_VISIBLE_DEVICES names its own GPUs (TaskProlog)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ladder.sandbox import Spec, gpu_devices, gpu_map, task_prolog, write_configs

pytestmark = pytest.mark.unit


def run_prolog(script: Path, node: str, cvd: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["SLURMD_NODENAME"] = node
    if cvd is not None:
        env["CUDA_VISIBLE_DEVICES"] = cvd
    out = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, check=True).stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())


@pytest.fixture
def prolog(tmp_path: Path) -> Path:
    script = tmp_path / "task_prolog.sh"
    script.write_text(task_prolog({"n1": [0, 1], "n2": [2, 3], "n3": []}))
    return script


@pytest.mark.parametrize(("node", "cvd", "want"), [
    ("n1", "0,1", "0,1"),
    ("n2", "0,1", "2,3"),   # Slurm 22.05: the index in the node's gres list
    ("n2", "1", "3"),
    ("n2", "2,3", "2,3"),   # already physical (a step inheriting the batch step's value)
    ("n2", None, "2,3"),    # no GPU request: the node's GPUs, as on a host of its own
    ("n2", "NoDevFiles", "NoDevFiles"),
])
def test_prolog_maps_indices_to_the_nodes_gpus(prolog: Path, node: str, cvd: str | None, want: str) -> None:
    env = run_prolog(prolog, node, cvd)
    assert env["CUDA_VISIBLE_DEVICES"] == want
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_prolog_leaves_nodes_without_gpus_alone(prolog: Path) -> None:
    assert run_prolog(prolog, "n3", "0") == {}
    assert run_prolog(prolog, "n9", None) == {}


def test_fake_gpus_are_numbered_across_the_machine(tmp_path: Path) -> None:
    spec = Spec(nodes=2, fake_gpus=2)
    assert [Path(d).name for d in gpu_devices(spec, tmp_path, "n2", 1)] == ["nvidia2", "nvidia3"]
    assert gpu_map(spec, tmp_path) == {"n1": [0, 1], "n2": [2, 3]}


def test_fake_gpus_are_typed_gres(tmp_path: Path) -> None:
    conf = write_configs(Spec(nodes=2, fake_gpus=2, instance=9), tmp_path).read_text()
    assert "NodeName=n1 NodeAddr=10.77.9.11 CPUs=2 RealMemory=8000 TmpDisk=4096 Gres=gpu:sim:2" in conf
    gres = (tmp_path / "etc" / "gres.conf").read_text().splitlines()
    assert f"NodeName=n2 Name=gpu Type=sim File={tmp_path}/dev/n2/nvidia3" in gres


def test_unequal_nodes_declare_and_get_fewer_cores(tmp_path: Path) -> None:
    import os

    spec = Spec(nodes=2, node_cpus={"n2": 1}, instance=9)
    conf = write_configs(spec, tmp_path).read_text()
    assert "NodeName=n1 NodeAddr=10.77.9.11 CPUs=2 " in conf and "NodeName=n2 NodeAddr=10.77.9.12 CPUs=1 " in conf
    host = os.cpu_count() or 1
    assert spec.cpu_ids("n2") == [host - 1]  # confined (taskset) to the host's last core
    assert spec.cpu_ids("n1") == list(range(max(host - 2, 0), host))


def test_a_state_from_before_the_private_tmp_is_not_reused(tmp_path: Path) -> None:
    """`up` reuses a running sandbox only if its spec is the same: one whose nodes share the host's /tmp is not."""
    import json
    from dataclasses import asdict

    from ladder.sandbox import load_state

    old = asdict(Spec(instance=9))
    del old["tmp_mb"]
    (tmp_path / "state.json").write_text(json.dumps({"spec": old, "pids": {}, "started": 0}))
    assert load_state(tmp_path).spec != Spec(instance=9)
    (tmp_path / "state.json").write_text(json.dumps({"spec": asdict(Spec(instance=9)), "pids": {}, "started": 0}))
    assert load_state(tmp_path).spec == Spec(instance=9)
