"""The config sections each stage reads: its cache key and the part of the config it is given.

The rules hash a stage's sections (a change re-runs the stage, any other edit does not)
and hand the stage exactly those sections, so a read of an undeclared section fails
loudly; tests/unit/test_stage_sections.py derives the reads from the code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

SECTIONS: dict[str, tuple[str, ...]] = {
    # env and probe read no config file: their rules pass these sections' values as arguments.
    "env": ("env",),
    "probe": ("cluster",),
    "ray": ("cluster", "ray", "monitor"),
    "single": ("cluster", "env", "ray", "model", "serve", "bench", "references", "monitor"),
    "tune": ("cluster", "env", "ray", "model", "serve", "bench", "tune"),
    "multinode": ("cluster", "env", "ray", "model", "parallel", "serve", "bench", "references", "monitor",
                  "faults", "tune"),
    # deploy serves multinode's layout too (its Ray cluster: ladder.multistage).
    "deploy": ("cluster", "env", "ray", "model", "parallel", "serve", "bench", "references", "monitor", "faults",
               "tune", "deploy"),
}
# Stages not listed (the report) show the whole validated config, so depend on all of it but the
# sections of the targets that come after `all`.
AFTER_ALL = ("deploy",)


def picked(stage: str, config: dict[str, Any]) -> dict[str, Any]:
    """The sections of ``config`` the stage reads (all of them for an unlisted stage)."""
    return {k: config[k] for k in SECTIONS.get(stage, tuple(k for k in config if k not in AFTER_ALL))}


def config_hash(stage: str, config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(picked(stage, config), sort_keys=True).encode()).hexdigest()[:12]


def write(stage: str, config: dict[str, Any], path: str, log: str) -> None:
    """The stage's config file (rule stage_config) and a log line naming what it holds."""
    sections = picked(stage, config)
    Path(path).write_text(json.dumps(sections, indent=1))
    Path(log).write_text(f"{stage}: sections {', '.join(sections)}; hash {config_hash(stage, config)}\n")
