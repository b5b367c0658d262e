"""Checks that reject a config before any Slurm job is submitted (ladder.preflight)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from snakemake.utils import validate

from ladder import preflight

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def cfg(**sections: dict[str, Any]) -> dict[str, Any]:
    """A config with the schema's defaults around the given sections."""
    c: dict[str, Any] = {k: dict(v) for k, v in sections.items()}
    validate(c, str(ROOT / "config" / "schema.yaml"))
    return c


@pytest.fixture
def basedir(tmp_path: Path) -> Path:
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "cpu.lock.txt").write_text("ray==2.0\n")
    return tmp_path


def test_defaults_have_no_problems(basedir):
    assert preflight.problems(cfg(), basedir) == []


def test_repo_lock_exists_for_default_flavor():
    assert preflight.problems(cfg(), ROOT) == []


def test_non_tiny_model_needs_path(basedir):
    assert preflight.problems(cfg(model={"name": "meta-llama/Llama-3-8B"}), basedir) == [
        "model.path: required when model.name is 'meta-llama/Llama-3-8B' (or use name 'tiny')"]


def test_missing_model_dir_named(basedir, tmp_path):
    found = preflight.problems(cfg(model={"name": "m", "path": str(tmp_path / "nope")}), basedir)
    assert len(found) == 1
    assert found[0].startswith("model.path: ") and "does not exist" in found[0]


def model_dir(root: Path, weights: bool) -> Path:
    d = root / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 32,
                                               "num_key_value_heads": 8, "num_hidden_layers": 32}))
    (d / "tokenizer_config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    if weights:
        (d / "model.safetensors").write_bytes(b"\0" * 16)
    return d


def test_checkpoint_without_weights_rejected(basedir, tmp_path):
    d = model_dir(tmp_path, weights=False)
    found = preflight.problems(cfg(model={"name": "m", "path": str(d)}), basedir)
    assert found and all(p.startswith("model.path: ") for p in found)
    assert any("no weights" in p for p in found)


def test_dummy_load_format_needs_no_weights(basedir, tmp_path):
    d = model_dir(tmp_path, weights=False)
    assert preflight.problems(cfg(model={"name": "m", "path": str(d), "load_format": "dummy"},
                                  env={"flavor": "cpu"}), basedir) == []


def test_checkpoint_shape_feeds_the_planner(basedir, tmp_path):
    d = model_dir(tmp_path, weights=True)
    found = preflight.problems(cfg(model={"name": "m", "path": str(d)}, parallel={"tensor_parallel_size": 3}),
                               basedir)
    assert found == ["parallel.tensor_parallel_size=3 does not divide the model's 32 attention heads"]


def test_unsupported_family_rejected(basedir, tmp_path):
    d = model_dir(tmp_path, weights=True)
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_head": 12, "n_layer": 12}))
    [found] = preflight.problems(cfg(model={"name": "m", "path": str(d)}), basedir)
    assert found.startswith("model.path: ") and "model_type 'gpt2' is not a family ladder supports" in found


def test_fp8_refused_on_cpu(basedir):
    [found] = preflight.problems(cfg(model={"quantization": "fp8"}), basedir)
    assert found.startswith("model.quantization=fp8: not supported with env.flavor=cpu")


def test_earlier_probe_refuses_fp8_on_old_gpus(basedir, tmp_path, monkeypatch):
    """The probe of an earlier run in this work directory knows the GPUs: FP8 on an A100 fails here."""
    (basedir / "envs" / "cuda.lock.txt").write_text("vllm==0.26.0\n")
    monkeypatch.chdir(tmp_path)
    config = cfg(env={"flavor": "cuda"}, cluster={"gpus_per_node": 1}, model={"quantization": "fp8"})
    assert preflight.problems(config, basedir) == []  # no probe yet: single checks it before serving
    (tmp_path / "results" / "probe").mkdir(parents=True)
    (tmp_path / "results" / "probe" / "nodes.json").write_text(json.dumps({"nodes": [
        {"slurm_node": "g1", "gpus": {"devices": [{"compute_capability": "8.0"}]}}]}))
    assert preflight.problems(config, basedir) == [
        "model.quantization=fp8: needs GPUs with compute capability >= 8.9 (FP8); the probe found 8.0"]


def test_plan_violation(basedir):
    found = preflight.problems(cfg(parallel={"pipeline_parallel_size": 3}), basedir)
    assert found == ["parallel.pipeline_parallel_size=3 exceeds cluster.nodes=2"]


def test_port_range_checks(basedir):
    c = cfg(ray={"port_base": 50000, "port_range": 20000})
    assert preflight.problems(c, basedir) == ["ray.port_base/ray.port_range: port range 50000+20000 exceeds 65535"]
    c["ray"].update(port_base=20000, port_range=100)  # below the schema's minimum, e.g. a hand-built dict
    assert preflight.problems(c, basedir) == [
        "ray.port_base/ray.port_range: port range 100 too small: needs at least 200 ports"]


def test_port_block_in_the_ephemeral_range_is_refused():
    ray = cfg()["ray"]
    assert preflight.port_problems(ray, (32768, 60999)) == []  # the default block ends below Linux's range
    ray["port_base"] = 20000  # 20000-39999: the old default
    (found,) = preflight.port_problems(ray, (32768, 60999))
    assert found.startswith("ray.port_base/ray.port_range: ports 20000-39999 overlap") and "32768-60999" in found
    assert preflight.port_problems(ray, None) == []  # not Linux: nothing known to check against
    ray.update(port_base=61000, port_range=4000)
    assert preflight.port_problems(ray, (32768, 60999)) == []


def test_ephemeral_range_read_from_proc(tmp_path):
    f = tmp_path / "range"
    f.write_text("32768\t60999\n")
    assert preflight.ephemeral_ports(f) == (32768, 60999)
    assert preflight.ephemeral_ports(tmp_path / "missing") is None


NODES = {"n1": 0, "n2": 0, "n3": 0}


@pytest.mark.parametrize(("cluster", "nodes", "expected"), [
    ({"nodes": 3}, NODES, []),
    ({"nodes": 5}, NODES, ["cluster.nodes=5: the default partition has 3 node(s) (n1, n2, n3)"]),
    ({"nodes": 2, "partition": "gpu", "gpus_per_node": 4}, {"g1": 4, "g2": 8}, []),
    ({"nodes": 2, "partition": "gpu", "gpus_per_node": 8}, {"g1": 4, "g2": 8},
     ["cluster.gpus_per_node=8: only 1 node(s) of partition 'gpu' have that many GPUs (g1: 4, g2: 8); "
      "cluster.nodes=2"]),
])
def test_more_nodes_or_gpus_than_the_partition_has(basedir, cluster, nodes, expected):
    c = cfg(cluster=cluster, env={"flavor": "cuda"} if cluster.get("gpus_per_node") else {})
    (basedir / "envs" / "cuda.lock.txt").write_text("vllm==0\n")
    assert preflight.problems(c, basedir, nodes) == expected


def test_network_cidr_must_parse(basedir):
    assert preflight.problems(cfg(cluster={"network": "10.2.0.0/16"}), basedir) == []
    (found,) = preflight.problems(cfg(cluster={"network": "10.2.0.0/40"}), basedir)
    assert found.startswith("cluster.network=10.2.0.0/40: not an IPv4 network")


def test_unknown_partition(basedir):
    assert preflight.problems(cfg(cluster={"partition": "nosuch"}), basedir, {}) == [
        "cluster.partition='nosuch': Slurm knows no such partition"]


def test_max_model_len_above_the_models_positions(basedir):
    assert preflight.problems(cfg(model={"max_model_len": 1024}), basedir) == [
        "model.max_model_len=1024: the model's max_position_embeddings is 512"]


def test_partition_gpus_reads_typed_and_untyped_gres(tmp_path, monkeypatch):
    """sinfo's %G as Slurm prints it: typed, untyped, with sockets, several types, none."""
    sinfo = tmp_path / "sinfo"
    sinfo.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\n"
                     "printf 'g1 gpu:h200:4(S:0-1)\\ng2 gpu:2,gpu:a100:2\\nc1 (null)\\n'\n")
    sinfo.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert preflight.partition_gpus(cfg(cluster={"partition": "gpu"})) == {"g1": 4, "g2": 4, "c1": 0}
    assert (tmp_path / "args").read_text().split() == ["-h", "-N", "-o", "%N", "%G", "-p", "gpu"]
    sinfo.write_text("#!/bin/sh\necho 'sinfo: error: Unable to contact slurm controller' >&2; exit 1\n")
    assert preflight.partition_gpus(cfg()) is None


def test_missing_lock_for_flavor(basedir):
    found = preflight.problems(cfg(env={"flavor": "cuda"}, cluster={"gpus_per_node": 8}), basedir)
    assert found == ["env.flavor=cuda: envs/cuda.lock.txt does not exist"]


def test_cpu_flavor_with_gpus(basedir):
    found = preflight.problems(cfg(cluster={"gpus_per_node": 4}), basedir)
    assert found == ["env.flavor=cpu with cluster.gpus_per_node > 0: use env.flavor=cuda for GPU nodes"]


def test_check_or_exit_lists_every_problem(basedir, capsys):
    with pytest.raises(SystemExit) as err:
        preflight.check_or_exit(cfg(parallel={"pipeline_parallel_size": 3}, cluster={"gpus_per_node": 1}), basedir)
    assert err.value.code == 2
    text = capsys.readouterr().err
    assert "rejected before submission" in text
    assert "parallel.pipeline_parallel_size=3" in text and "env.flavor=cpu" in text


def test_check_or_exit_silent_when_fine(basedir, capsys):
    preflight.check_or_exit(cfg(), basedir)
    assert capsys.readouterr().err == ""


def test_gpu_tune_setting_refused_on_cpu(basedir):
    assert preflight.problems(cfg(tune={"space": {"kv_cache_dtype": ["fp8"]}}), basedir) == [
        "tune.space.kv_cache_dtype: a GPU setting, but cluster.gpus_per_node is 0"]
    assert preflight.problems(cfg(tune={"enabled": False, "space": {"kv_cache_dtype": ["fp8"]}}), basedir) == []


def test_profile_slurm_extra_override_is_refused():
    """A profile's set-resources slurm_extra would silently replace the rule's --exclude/--reservation."""
    assert preflight.override_problems({"multinode": {"runtime": 120}}) == []
    (found,) = preflight.override_problems({"multinode": {"runtime": 120}, "ray": {"slurm_extra": "'--qos=x'"}})
    assert found.startswith("profile set-resources ray: slurm_extra would replace ladder's own")


@pytest.mark.parametrize(("wall", "expected"), [("00:05:00", 5), ("1-00:00:00", 1440), ("30:00", 30),
                                                ("2-12:30:59", 3630), ("90", 90)])
def test_slurm_wall_times_in_minutes(wall, expected):
    assert preflight.minutes(wall) == expected


ACCT = {"user": "root", "accounts": {"lab": {"normal", "short"}, "root": {"normal"}}, "default_account": "lab",
        "max_wall": {"normal": None, "short": 5, "long": 2880}}


@pytest.mark.parametrize(("cluster", "expected"), [
    ({}, []),
    ({"account": "lab", "qos": "normal"}, []),
    ({"account": "nosuch"},
     ["cluster.account=nosuch: user root has no association with it in Slurm (accounts: lab, root)"]),
    ({"qos": "gold"}, ["cluster.qos=gold: Slurm knows no such QoS (long, normal, short)"]),
    ({"qos": "long"}, ["cluster.qos=long: not allowed for account lab (allowed: normal, short)"]),
    ({"account": "root", "qos": "short", "time_min": 5, "stage_time_min": {"tune": 5}},
     ["cluster.qos=short: not allowed for account root (allowed: normal)"]),
    ({"qos": "short"}, ["cluster.time_min/stage_time_min: above QoS short's MaxWall of 5 min: env 30 min, "
                        "probe 30 min, ray 30 min, single 30 min, tune 45 min, multinode 30 min"]),
    ({"qos": "short", "time_min": 5, "stage_time_min": {"multinode": 20}},
     ["cluster.time_min/stage_time_min: above QoS short's MaxWall of 5 min: tune 45 min, multinode 20 min"]),
    # One allocation: the job's limit is the stages' sum.
    ({"qos": "short", "time_min": 1, "stage_time_min": {"tune": 1}, "one_allocation": True},
     ["cluster.one_allocation: the stages' time limits sum to 6 min, above QoS short's MaxWall of 5 min "
      "(cluster.time_min/stage_time_min)"]),
    ({"qos": "short", "time_min": 1, "stage_time_min": {"tune": 1}}, []),
])
def test_account_and_qos_checked_against_slurms_associations(cluster, expected):
    assert preflight.accounting_problems(cfg(cluster=cluster), ACCT) == expected


@pytest.mark.parametrize(("deploy", "expected"), [
    ({"replicas": 2, "max_replicas": 8}, []),
    ({"replicas": 3, "min_replicas": 1, "max_replicas": 2},
     ["deploy.replicas=3: not within deploy.min_replicas=1 .. max_replicas=2"]),
    # More replicas than nodes is deploy's own check (ladder.deploy.capacity_problem): `all` on one node
    # must not be refused for a deployment it does not start.
    ({"replicas": 4, "max_replicas": 4}, []),
])
def test_deploy_replicas_within_bounds_whatever_the_partition(basedir, deploy, expected):
    assert preflight.problems(cfg(deploy=deploy), basedir, NODES) == expected


def test_paths_the_nodes_read_are_refused_under_tmp():
    """Each node has its own /tmp (a site's, the sandbox's): a prefix or model there is the controller's alone."""
    found = preflight.node_local_problems(cfg(env={"prefix": "/tmp/venv"}, model={"path": "/tmp/models/m"}),
                                          Path("/tmp/work"), ROOT)
    assert [f.split(":")[0] for f in found] == ["env.prefix", "model.path", "work directory"]
    assert all("under /tmp, which each node has its own of" in f for f in found)
    assert preflight.node_local_problems(cfg(), ROOT, ROOT) == []
    # A checkout under /tmp is the shared storage itself: what lies in it is seen by every node.
    assert preflight.node_local_problems(cfg(env={"prefix": "/tmp/ci/repo/.venv"}), Path("/tmp/ci/repo/.cache/w"),
                                         Path("/tmp/ci/repo")) == []
