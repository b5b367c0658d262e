"""Each stage's declared config sections (ladder.stageconfig) cover what its code reads.

The reads are derived from the code: every ``cfg["<section>"]`` / ``config["<section>"]``
(also ``self.cfg[...]`` and ``.get("<section>")``) in the stage's module and in every
ladder module it imports, directly or not.  A section missing from the declared list
would let an edit of that section reuse a stale verdict.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from ladder.stageconfig import SECTIONS, config_hash, picked

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "scripts" / "ladder"
SCHEMA_SECTIONS = set(yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())["properties"])
CONFIG_NAMES = {"cfg", "config"}
MODULES = {"env": "envcheck", "probe": "probe", "ray": "raystage", "single": "singlestage", "tune": "tune",
           "multinode": "multistage", "deploy": "deploy"}


def tree(module: str) -> ast.Module:
    return ast.parse((PKG / f"{module}.py").read_text())


def ladder_imports(module: str) -> set[str]:
    out = set()
    for n in ast.walk(tree(module)):  # function-level (lazy) imports included
        if isinstance(n, ast.ImportFrom) and n.module == "ladder":
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("ladder."):
            out.add(n.module.split(".")[1])
        elif isinstance(n, ast.Import):
            out |= {a.name.split(".")[1] for a in n.names if a.name.startswith("ladder.")}
    return {m for m in out if (PKG / f"{m}.py").exists()}


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += ladder_imports(m)
    return seen


def is_config(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id in CONFIG_NAMES) or (
        isinstance(node, ast.Attribute) and node.attr in CONFIG_NAMES)


def sections_read(module: str) -> set[str]:
    out = set()
    for n in ast.walk(tree(module)):
        if isinstance(n, ast.Subscript) and is_config(n.value) and isinstance(n.slice, ast.Constant):
            out.add(n.slice.value)
        elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
              and is_config(n.func.value) and n.args and isinstance(n.args[0], ast.Constant)):
            out.add(n.args[0].value)
    # Model config.json keys (roofline, plan) share the names cfg/config: keep top-level sections only.
    return out & SCHEMA_SECTIONS


@pytest.mark.parametrize("stage", sorted(MODULES))
def test_declared_sections_cover_the_code(stage):
    declared = set(SECTIONS[stage])
    missing = {m: sorted(sections_read(m) - declared) for m in closure(MODULES[stage])
               if sections_read(m) - declared}
    assert not missing, f"stage {stage} reads config sections not in stageconfig.SECTIONS: {missing}"


def test_every_stage_declared_and_sections_exist():
    assert set(SECTIONS) == set(MODULES)
    assert all(set(s) <= SCHEMA_SECTIONS for s in SECTIONS.values())


def test_scan_sees_reads_in_imported_modules():
    # singlestage -> monitor/vllmserver: the scan must follow imports, or a read there goes unseen.
    assert "monitor" in closure("singlestage") and "vllmserver" in closure("singlestage")
    assert {"cluster", "ray", "monitor"} <= set().union(*map(sections_read, closure("raystage")))


def test_hash_and_picked_follow_only_the_stage_sections():
    cfg = {s: {"x": 1} for s in SCHEMA_SECTIONS}
    other = cfg | {"bench": {"x": 2}}
    assert config_hash("ray", cfg) == config_hash("ray", other)  # bench is not the ray stage's
    assert config_hash("single", cfg) != config_hash("single", other)
    assert set(picked("ray", cfg)) == set(SECTIONS["ray"])
    assert config_hash("report", cfg) != config_hash("report", other)
    # the report reads every section but those of the targets after `all` (deploy)
    assert picked("report", cfg) == {k: v for k, v in cfg.items() if k != "deploy"}
    assert config_hash("report", cfg) == config_hash("report", cfg | {"deploy": {"x": 2}})
