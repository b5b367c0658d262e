"""config/schema.yaml through snakemake.utils.validate, as the Snakefile uses it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = str(ROOT / "config" / "schema.yaml")


def check(cfg: dict[str, Any]) -> dict[str, Any]:
    validate(cfg, SCHEMA)
    return cfg


def rejected(cfg: dict[str, Any]) -> str:
    with pytest.raises(WorkflowError) as err:
        validate(cfg, SCHEMA)
    return str(err.value)


def test_repo_config_is_valid():
    cfg = check(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    assert cfg["cluster"]["name"] == "sandbox"


OVERLAYS = sorted((ROOT / "config").glob("**/*.yaml"))


@pytest.mark.parametrize("overlay", [p for p in OVERLAYS if p.name != "schema.yaml"],
                         ids=lambda p: str(p.relative_to(ROOT / "config")))
def test_every_overlay_is_valid_over_the_repo_config(overlay):
    """As Snakemake reads `--configfile config.yaml X`: a bad overlay is found here, not on a lent GPU
    (an h200-tune run was refused there in 5 s for `tune.runs: 2`)."""
    from snakemake.utils import update_config

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(cfg, yaml.safe_load(overlay.read_text()))
    check(cfg)


def test_empty_config_gets_every_default():
    cfg = check({})
    assert cfg["cluster"] == {"name": "sandbox", "partition": None, "network": "auto", "nodes": 2, "gpus_per_node": 0,
                              "cpus_per_node": 2, "mem_mb_per_node": 6000, "time_min": 30, "stage_time_min": {},
                              "account": None, "qos": None, "constraint": None, "reservation": None,
                              "exclusive": False, "gpu_type": None, "one_allocation": False}
    assert cfg["env"]["prefix"] == ".venv" and cfg["env"]["flavor"] == "cpu" and cfg["env"]["build"] is True
    assert cfg["env"]["modules"] == [] and cfg["env"]["setup"] == []
    assert cfg["ray"]["port_base"] == 12000 and cfg["ray"]["min_busbw_gbps"] is None
    assert cfg["parallel"] == {"tensor_parallel_size": "auto", "pipeline_parallel_size": "auto",
                               "split_logprob_tolerance": 0.05}
    assert cfg["bench"]["concurrency"] == [1, 4]
    assert cfg["faults"] == {"retries": 0, "exclude_on_failure": False, "allow_degraded": False,
                             "pending_patience_min": 30}
    assert cfg["references"] == {}


def test_defaults_fill_around_given_values():
    cfg = check({"cluster": {"nodes": 3}, "ray": {"port_base": 30000}})
    assert cfg["cluster"]["nodes"] == 3
    assert cfg["cluster"]["gpus_per_node"] == 0
    assert cfg["ray"]["port_base"] == 30000 and cfg["ray"]["port_range"] == 20000


def test_every_property_has_description_and_default():
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    missing = []
    for section, sub in schema["properties"].items():
        for key in ("description", "default"):
            if key not in sub:
                missing.append(f"{section}: {key}")
        for name, prop in sub.get("properties", {}).items():
            for key in ("description", "default"):
                if key not in prop:
                    missing.append(f"{section}.{name}: {key}")
    assert not missing


@pytest.mark.parametrize(("cfg", "key"), [
    ({"clustr": {"nodes": 2}}, "'clustr' was unexpected"),
    ({"cluster": {"nodse": 2}}, "'nodse' was unexpected"),
    ({"ray": {"port": 1}}, "'port' was unexpected"),
    ({"bench": {"num_prompt": 3}}, "'num_prompt' was unexpected"),
])
def test_unknown_key_is_named(cfg, key):
    assert key in rejected(cfg)


@pytest.mark.parametrize(("cfg", "where"), [
    ({"cluster": {"nodes": "two"}}, "['cluster']['nodes']"),
    ({"cluster": {"gpus_per_node": 1.5}}, "['cluster']['gpus_per_node']"),
    ({"env": {"build": "yes"}}, "['env']['build']"),
    ({"bench": {"concurrency": 4}}, "['bench']['concurrency']"),
    ({"serve": {"extra_args": "--foo"}}, "['serve']['extra_args']"),
    ({"references": {"sandbox": {"single.tok_s": [1, "a", None, "tok/s"]}}}, "['references']['sandbox']"),
])
def test_wrong_type_is_named(cfg, where):
    msg = rejected(cfg)
    assert "is not of type" in msg
    assert f"On instance{where}" in msg


@pytest.mark.parametrize(("cfg", "where", "why"), [
    ({"cluster": {"nodes": 0}}, "['cluster']['nodes']", "less than the minimum"),
    ({"cluster": {"nodes": 65}}, "['cluster']['nodes']", "greater than the maximum"),
    ({"cluster": {"mem_mb_per_node": 10}}, "['cluster']['mem_mb_per_node']", "less than the minimum"),
    ({"ray": {"port_base": 80}}, "['ray']['port_base']", "less than the minimum"),
    ({"ray": {"port_range": 10}}, "['ray']['port_range']", "less than the minimum"),
    ({"faults": {"retries": 9}}, "['faults']['retries']", "greater than the maximum"),
    ({"bench": {"concurrency": [0]}}, "['bench']['concurrency'][0]", "less than the minimum"),
    ({"bench": {"concurrency": []}}, "['bench']['concurrency']", "should be non-empty"),
    ({"env": {"flavor": "rocm"}}, "['env']['flavor']", "is not one of"),
    ({"cluster": {"name": "my cluster"}}, "['cluster']['name']", "does not match"),
    ({"serve": {"extra_args": ["--x; rm -rf /"]}}, "['serve']['extra_args'][0]", "does not match"),
])
def test_out_of_range_is_named(cfg, where, why):
    msg = rejected(cfg)
    assert why in msg
    assert f"On instance{where}" in msg


@pytest.mark.parametrize("value", [0, "all", 1.5, -2])
def test_parallel_sizes_are_positive_int_or_auto(value):
    assert "['parallel']['tensor_parallel_size']" in rejected({"parallel": {"tensor_parallel_size": value}})


@pytest.mark.parametrize("value", [1, 4, "auto"])
def test_parallel_sizes_accepted(value):
    assert check({"parallel": {"pipeline_parallel_size": value}})["parallel"]["pipeline_parallel_size"] == value


def test_reference_entry_needs_four_items():
    assert "['references']['sandbox']['single.tok_s']" in rejected(
        {"references": {"sandbox": {"single.tok_s": [1, -0.1, 0.1]}}})
    cfg = check({"references": {"sandbox": {"single.tok_s": [100.0, -0.1, None, "tok/s"]}}})
    assert cfg["references"]["sandbox"]["single.tok_s"][2] is None


def test_validation_does_not_touch_a_valid_section():
    given = {"cluster": {"name": "lab", "partition": "gpu", "network": "ib0", "nodes": 4, "gpus_per_node": 8,
                         "cpus_per_node": 64, "mem_mb_per_node": 500000, "time_min": 120,
                         "stage_time_min": {"multinode": 240}, "account": "ml", "qos": "high",
                         "constraint": "h100&ib", "reservation": "maint", "exclusive": True, "gpu_type": "h100",
                         "one_allocation": True}}
    assert check(copy.deepcopy(given))["cluster"] == given["cluster"]
