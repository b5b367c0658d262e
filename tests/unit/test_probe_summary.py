"""ladder.probe summarize: node count, GPU count, one address and hostname per node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ladder.probe import summarize
from ladder.raycommand import choose_nic
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


def site_node() -> dict:
    """A GPU node as a site has it: management NIC with the default route, IPoIB fabric, a docker bridge."""
    n = node("n1", None)
    n["nics"] += [{"name": "docker0", "up": True, "speed_mbps": 10000, "ipv4": ["172.17.0.1"]},
                  {"name": "eno1", "up": True, "speed_mbps": 1000, "ipv4": ["10.1.0.11"]},
                  {"name": "eth9", "up": False, "speed_mbps": 100000, "ipv4": ["10.9.0.11"]},
                  {"name": "ib0", "up": True, "speed_mbps": 0, "infiniband": True, "ipv4": ["10.2.0.11"]}]
    n["default_route"] = "eno1"
    return n


def test_auto_picks_the_fabric_never_a_bridge_or_a_down_link():
    chosen = choose_nic(site_node())
    assert (chosen["iface"], chosen["ip"]) == ("ib0", "10.2.0.11")
    assert chosen["why"] == "auto: ib0 (InfiniBand) of eno1, ib0; skipped docker0"


def test_auto_without_infiniband_takes_the_fastest_then_the_default_route():
    n = site_node()
    n["nics"] = [c for c in n["nics"] if c["name"] != "ib0"]
    assert choose_nic(n)["iface"] == "eno1"
    n["nics"].append({"name": "ens5", "up": True, "speed_mbps": 1000, "ipv4": ["10.5.0.11"]})
    assert choose_nic(n)["why"] == "auto: eno1 (1000 Mb/s, default route) of eno1, ens5; skipped docker0"
    n["nics"].append({"name": "ens6", "up": True, "speed_mbps": 25000, "ipv4": ["10.6.0.11"]})
    assert choose_nic(n)["iface"] == "ens6"


@pytest.mark.parametrize(("network", "iface"), [
    ("eno1", "eno1"), ("10.1.0.0/16", "eno1"), ("10.2.0.0/24", "ib0"), ("docker0", "docker0"),
    ("eth9", None), ("192.168.0.0/16", None), ("lo", None)])
def test_network_by_name_or_cidr(network, iface):
    chosen = choose_nic(site_node(), network)
    assert (chosen and chosen["iface"]) == iface and (chosen is None or network in chosen["why"])


def test_summary_records_the_choice_and_why(tmp_path):
    v = Verdict("probe")
    (n,) = summarize(write(tmp_path / "n", site_node()), ["n1"], 0, v)
    assert n["network"]["iface"] == "ib0"
    check = next(c for c in v.checks if c.name == "n1:address")
    assert check.ok and check.value == "10.2.0.11" and check.detail.startswith("auto: ib0")
    v = Verdict("probe")
    summarize(write(tmp_path / "m", site_node()), ["n1"], 0, v, network="eth9")  # down
    check = next(c for c in v.checks if c.name == "n1:address")
    assert check.ok is False and "eth9 ['10.9.0.11'] down" in check.detail
