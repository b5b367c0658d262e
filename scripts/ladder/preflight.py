"""Checks that run when the workflow is parsed, before any Slurm job is submitted."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ladder.goodput import space_errors
from ladder.plan import PlanError, family_problems, make_plan, model_config, model_shape, quantization_problems
from ladder.slurm import job_ports


def partition_gpus(config: dict[str, Any]) -> dict[str, int] | None:
    """GPUs per node of the configured partition (of every partition when none is), from one `sinfo`;
    None when no controller answers (a sandbox that is down, a login node off the cluster: dry runs
    and lint still work, and a real run fails at its first sbatch)."""
    if not shutil.which("sinfo"):
        return None
    cmd = ["sinfo", "-h", "-N", "-o", "%N %G"]  # -N: one line per node, no host list to expand
    if config["cluster"]["partition"]:
        cmd += ["-p", config["cluster"]["partition"]]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        res = None
    if res is None or res.returncode != 0:
        why = "got no answer in 15 s" if res is None else f"failed: {res.stderr.strip()[:200]}"
        print(f"ladder: `{' '.join(cmd)}` {why}; is the Slurm controller up (SLURM_CONF)? "
              "The partition's nodes stay unknown.", file=sys.stderr)
        return None
    nodes: dict[str, int] = {}
    for line in res.stdout.splitlines():
        name, _, gres = line.partition(" ")
        # gres: "gpu:4", "gpu:h200:4(S:0-1)", "gpu:a:2,gpu:b:2", "(null)"; a node listed once per partition.
        counts = [g.split("(")[0].split(":")[-1] for g in gres.split(",") if g.startswith("gpu:")]
        nodes[name] = sum(int(c) for c in counts if c.isdigit())
    return nodes


def capacity_problems(cluster: dict[str, Any], nodes: dict[str, int]) -> list[str]:
    """A job asking for more nodes or GPUs than the partition has pends forever (PartitionConfig)."""
    where = f"partition {cluster['partition']!r}" if cluster["partition"] else "the default partition"
    want, gpus = cluster["nodes"], cluster["gpus_per_node"]
    if want > len(nodes):
        return [f"cluster.nodes={want}: {where} has {len(nodes)} node(s) ({', '.join(sorted(nodes)) or 'none'})"]
    with_gpus = sorted(n for n, g in nodes.items() if g >= gpus)
    if gpus and len(with_gpus) < want:
        return [f"cluster.gpus_per_node={gpus}: only {len(with_gpus)} node(s) of {where} have that many GPUs "
                f"({', '.join(f'{n}: {g}' for n, g in sorted(nodes.items()))}); cluster.nodes={want}"]
    return []


def ephemeral_ports(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int] | None:
    """Linux's range for outgoing connections' local ports: a port in it may be taken at any moment."""
    try:
        lo, hi = path.read_text().split()
    except (OSError, ValueError):
        return None
    return int(lo), int(hi)


def port_problems(ray: dict[str, Any], ephemeral: tuple[int, int] | None) -> list[str]:
    try:
        job_ports(0, ray["port_base"], ray["port_range"])
    except ValueError as err:
        return [f"ray.port_base/ray.port_range: {err}"]
    first, last = ray["port_base"], ray["port_base"] + ray["port_range"] - 1
    if ephemeral and first <= ephemeral[1] and last >= ephemeral[0]:
        return [f"ray.port_base/ray.port_range: ports {first}-{last} overlap this host's ephemeral range "
                f"{ephemeral[0]}-{ephemeral[1]} (net.ipv4.ip_local_port_range), where any outgoing connection "
                "may hold a port ladder needs: move the block below or above it"]
    return []


def problems(config: dict[str, Any], basedir: Path, partition: dict[str, int] | None = None) -> list[str]:
    """Everything wrong with the config, each naming its key; `partition`: GPUs per node of the
    partition (partition_gpus), None when unknown."""
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
        longest = model_config(model).get("max_position_embeddings")
        if longest and model["max_model_len"] > longest:
            out.append(f"model.max_model_len={model['max_model_len']}: the model's max_position_embeddings "
                       f"is {longest}")
    # An earlier probe of this work directory knows the nodes' CPU features and GPU capabilities.
    probe = Path("results/probe/nodes.json")
    out += quantization_problems(model, config["env"]["flavor"],
                                 json.loads(probe.read_text())["nodes"] if probe.is_file() else None)
    key_file = config["serve"]["api_key_file"]
    if key_file and not Path(key_file).is_file():
        out.append(f"serve.api_key_file: {key_file} does not exist (the API key is read from it)")
    out += port_problems(config["ray"], ephemeral_ports())
    network = config["cluster"]["network"]
    if "/" in network:
        try:
            ipaddress.IPv4Network(network, strict=False)
        except ValueError as err:
            out.append(f"cluster.network={network}: not an IPv4 network ({err})")
    flavor = config["env"]["flavor"]
    if not (basedir / "envs" / f"{flavor}.lock.txt").exists():
        out.append(f"env.flavor={flavor}: envs/{flavor}.lock.txt does not exist")
    if flavor == "cpu" and config["cluster"]["gpus_per_node"]:
        out.append("env.flavor=cpu with cluster.gpus_per_node > 0: use env.flavor=cuda for GPU nodes")
    out += space_errors(config["tune"], config["cluster"]["gpus_per_node"])
    if partition is not None:
        part = config["cluster"]["partition"]
        out += [f"cluster.partition={part!r}: Slurm knows no such partition"] if part and not partition \
            else capacity_problems(config["cluster"], partition)
    return out


def override_problems(overrides: dict[str, dict[str, Any]]) -> list[str]:
    """A profile's set-resources slurm_extra replaces the rule's, which carries --exclude, --reservation
    and --exclusive: refused, pointing at the config keys that set those."""
    return [f"profile set-resources {rule}: slurm_extra would replace ladder's own (failed nodes excluded, "
            "cluster.reservation, cluster.exclusive); use cluster.account / qos / constraint / reservation / "
            "exclusive / stage_time_min instead" for rule, res in sorted(overrides.items()) if "slurm_extra" in res]


def check_or_exit(config: dict[str, Any], basedir: Path, partition: dict[str, int] | None = None,
                  overrides: dict[str, dict[str, Any]] | None = None) -> None:
    found = problems(config, basedir, partition) + override_problems(overrides or {})
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
