"""Checks that run when the workflow is parsed, before any Slurm job is submitted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ladder.goodput import space_errors
from ladder.plan import PlanError, family_problems, make_plan, model_shape, quantization_problems
from ladder.slurm import job_ports


def problems(config: dict[str, Any], basedir: Path) -> list[str]:
    out = []
    model = config["model"]
    if model["name"] != "tiny" or model.get("path"):
        if not model.get("path"):
            out.append(f"model.path: required when model.name is {model['name']!r} (or use name 'tiny')")
        else:
            from ladder.tinymodel import check_model_dir

            # --load-format dummy makes random weights: the checkpoint needs none.
            out += [f"model.path: {p}" for p in check_model_dir(Path(model["path"]),
                                                                require_weights=model["load_format"] != "dummy")]
    if not out:
        out += family_problems(model)
        try:
            make_plan(config["parallel"], config["cluster"]["nodes"], config["cluster"]["gpus_per_node"],
                      model_shape(model))
        except PlanError as err:
            out.append(str(err))
    # An earlier probe of this work directory knows the nodes' CPU features and GPU capabilities.
    probe = Path("results/probe/nodes.json")
    out += quantization_problems(model, config["env"]["flavor"],
                                 json.loads(probe.read_text())["nodes"] if probe.is_file() else None)
    key_file = config["serve"]["api_key_file"]
    if key_file and not Path(key_file).is_file():
        out.append(f"serve.api_key_file: {key_file} does not exist (the API key is read from it)")
    try:
        job_ports(0, config["ray"]["port_base"], config["ray"]["port_range"])
    except ValueError as err:
        out.append(f"ray.port_base/ray.port_range: {err}")
    flavor = config["env"]["flavor"]
    if not (basedir / "envs" / f"{flavor}.lock.txt").exists():
        out.append(f"env.flavor={flavor}: envs/{flavor}.lock.txt does not exist")
    if flavor == "cpu" and config["cluster"]["gpus_per_node"]:
        out.append("env.flavor=cpu with cluster.gpus_per_node > 0: use env.flavor=cuda for GPU nodes")
    out += space_errors(config["tune"], config["cluster"]["gpus_per_node"])
    part = config["cluster"]["partition"]
    if part and shutil.which("sinfo"):
        res = subprocess.run(["sinfo", "-h", "-p", part, "-o", "%P"], capture_output=True, text=True, timeout=30)
        if not res.stdout.strip():
            out.append(f"cluster.partition={part!r}: Slurm knows no such partition")
    return out


def check_or_exit(config: dict[str, Any], basedir: Path) -> None:
    found = problems(config, basedir)
    if found:
        print("ladder: configuration rejected before submission:\n  " + "\n  ".join(found), file=sys.stderr)
        raise SystemExit(2)


def yaml_or_exit(path: Path) -> None:
    """A config file that is not valid YAML is named with the line of the error.

    (Snakemake's own message for a broken config file names neither.)
    """
    import yaml

    try:
        yaml.safe_load(path.read_text())
    except OSError as err:
        print(f"ladder: cannot read config file {path}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        print(f"ladder: config file {path} is not valid YAML ({where.strip() or 'unknown position'}): "
              f"{getattr(err, 'problem', err)}", file=sys.stderr)
        raise SystemExit(2) from None
