"""Checks that run when the workflow is parsed, before any Slurm job is submitted."""

from __future__ import annotations

import getpass
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
        last = (res.stderr.strip().splitlines() or ["(no message)"])[-1][:200] if res else ""
        why = f"failed: {last}" if res else "got no answer in 15 s"
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


STAGES = ("env", "probe", "ray", "single", "tune", "multinode")


def stage_minutes(config: dict[str, Any], stage: str) -> int:
    """Slurm time limit of a stage's job: cluster.stage_time_min, else time_min (tune: at least its
    budget plus 15 minutes)."""
    c = config["cluster"]
    if stage in c["stage_time_min"]:
        return c["stage_time_min"][stage]
    if stage == "tune":
        return max(c["time_min"], int(config["tune"]["budget_s"] / 60) + 15)
    return c["time_min"]


def minutes(wall: str) -> int:
    """Slurm's [days-]hours:minutes:seconds (or minutes:seconds) in whole minutes, rounded down."""
    days, _, clock = wall.rpartition("-")
    parts = [int(x) for x in clock.split(":")]
    h, m, sec = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + sec // 60


def sacctmgr(*args: str) -> str | None:
    try:
        res = subprocess.run(["sacctmgr", "-n", "-P", *args], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def slurm_accounting() -> dict[str, Any] | None:
    """This user's associations (account -> QoS allowed), default account and every QoS's MaxWall
    (minutes), from sacctmgr; None where Slurm keeps no accounting (or it does not answer)."""
    if not shutil.which("sacctmgr"):
        return None
    user = getpass.getuser()
    assoc, qos, default = (sacctmgr("show", "assoc", "where", f"user={user}", "format=account,qos"),
                           sacctmgr("show", "qos", "format=name,maxwall"),
                           sacctmgr("show", "user", user, "format=defaultaccount"))
    if assoc is None or qos is None:
        return None
    accounts: dict[str, set[str]] = {}
    for line in assoc.splitlines():
        account, _, allowed = line.partition("|")
        accounts.setdefault(account, set()).update(q for q in allowed.split(",") if q)
    walls = dict(line.split("|", 1) for line in qos.splitlines() if "|" in line)
    return {"user": user, "accounts": accounts, "default_account": (default or "").strip(),
            "max_wall": {name: minutes(w) if w else None for name, w in walls.items()}}


def accounting_problems(config: dict[str, Any], acct: dict[str, Any]) -> list[str]:
    """An account or QoS Slurm does not know or does not allow, a stage's time above its QoS's MaxWall:
    Slurm refuses the first at submission and keeps the others pending for ever."""
    c, out = config["cluster"], []
    account = c["account"] or acct["default_account"]
    if c["account"] and c["account"] not in acct["accounts"]:
        return [f"cluster.account={c['account']}: user {acct['user']} has no association with it in Slurm "
                f"(accounts: {', '.join(sorted(acct['accounts'])) or 'none'})"]
    if not c["qos"]:
        return []
    if c["qos"] not in acct["max_wall"]:
        return [f"cluster.qos={c['qos']}: Slurm knows no such QoS ({', '.join(sorted(acct['max_wall']))})"]
    allowed = acct["accounts"].get(account, set())
    if c["qos"] not in allowed:
        out.append(f"cluster.qos={c['qos']}: not allowed for account {account} "
                   f"(allowed: {', '.join(sorted(allowed)) or 'none'})")
    wall = acct["max_wall"][c["qos"]]
    asked = {st: stage_minutes(config, st) for st in STAGES if st != "tune" or config["tune"]["enabled"]}
    over = [f"{st} {m} min" for st, m in asked.items() if wall is not None and m > wall]
    if over:
        out.append(f"cluster.time_min/stage_time_min: above QoS {c['qos']}'s MaxWall of {wall} min: {', '.join(over)}")
    elif c["one_allocation"] and wall is not None and sum(asked.values()) > wall:
        # One job runs them all: its limit is their sum (for a first run, when every stage runs).
        out.append(f"cluster.one_allocation: the stages' time limits sum to {sum(asked.values())} min, above QoS "
                   f"{c['qos']}'s MaxWall of {wall} min (cluster.time_min/stage_time_min)")
    return out


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


NODE_LOCAL = Path("/tmp")  # each node has its own (a site's nodes, and every sandbox node: ladder.sandbox)


def node_local(path: Path | str, repo: Path | None = None) -> bool:
    """Whether `path` lies in /tmp, which the nodes do not share with the controller. The repository, when
    given, is on shared storage wherever it is (README "Your site"; the sandbox keeps a checkout under /tmp
    visible on its nodes), and so is what it holds."""
    p = Path(path).resolve()
    return p.is_relative_to(NODE_LOCAL.resolve()) and not (repo and p.is_relative_to(repo.resolve()))


def node_local_problems(config: dict[str, Any], workdir: Path, repo: Path) -> list[str]:
    """Paths every node must read (the env prefix, the model, the work directory) that lie in /tmp: the
    controller sees them, the nodes do not."""
    paths = [("env.prefix", config["env"]["prefix"]), ("model.path", config["model"].get("path")),
             ("work directory", str(workdir))]
    return [f"{key}: {value} is under {NODE_LOCAL}, which each node has its own of: use shared storage"
            for key, value in paths if value and Path(value).is_absolute() and node_local(value, repo)]


def problems(config: dict[str, Any], basedir: Path, partition: dict[str, int] | None = None,
             accounting: dict[str, Any] | None = None) -> list[str]:
    """Everything wrong with the config, each naming its key; `partition`: GPUs per node of the
    partition (partition_gpus), `accounting`: Slurm's associations (slurm_accounting); None when unknown."""
    out = accounting_problems(config, accounting) if accounting else []
    out += node_local_problems(config, Path.cwd(), basedir)
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
    d = config["deploy"]
    if not d["min_replicas"] <= d["replicas"] <= d["max_replicas"]:
        out.append(f"deploy.replicas={d['replicas']}: not within deploy.min_replicas={d['min_replicas']} .. "
                   f"max_replicas={d['max_replicas']}")
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
    found = problems(config, basedir, partition, slurm_accounting() if partition is not None else None)
    found += override_problems(overrides or {})
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
