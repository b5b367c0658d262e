# Helpers shared by every stage: paths, the stage interpreter, resources and the
# checks that must fail before any Slurm job is submitted.
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from ladder import preflight, slurm, stageconfig  # noqa: E402

PREFIX = Path(config["env"]["prefix"]).resolve()
# Every stage after env runs in the environment env verified.
PY = f"env PYTHONPATH={Path(workflow.basedir) / 'scripts'} {PREFIX / 'bin' / 'python'}"
# env itself may have to build that environment, so it runs on the controller's interpreter.
BOOT_PY = f"env PYTHONPATH={Path(workflow.basedir) / 'scripts'} {sys.executable}"
# Shared cache: the tiny model and vLLM/inductor compile caches, reused across runs.
CACHE = str(Path(workflow.basedir) / ".cache")
LOCK = str(Path(workflow.basedir) / "envs" / f"{config['env']['flavor']}.lock.txt")


NODES = config["cluster"]["nodes"]
GPUS = config["cluster"]["gpus_per_node"]

# One sinfo per run: GPUs per node of the partition (None when no controller answers).
PARTITION = preflight.partition_gpus(config)
# Needed by the fingerprint, the env stage and every retry's node count.
PARTITION_NODES = ",".join(sorted(PARTITION or {}))

# Bad input fails here, naming the key or file, before anything is submitted.
preflight.check_or_exit(config, Path(workflow.basedir), PARTITION,
                        workflow.resource_settings.overwrite_resources or {})

# env.setup, then env.modules, run first in every job's shell (after Snakemake's strict mode).
# `module` is a shell function login shells define; a job's `bash -c` gets it from Lmod's init,
# which (like `module` itself) reads unset variables.
SETUP = config["env"]["setup"] + ([
    "command -v module >/dev/null || { set +u; . /etc/profile.d/lmod.sh; set -u; }",
    f"set +u; module load {' '.join(config['env']['modules'])}; set -u"] if config["env"]["modules"] else [])
if SETUP:
    # Snakemake formats the prefix with each rule's wildcards: literal braces are doubled.
    shell.prefix(("set -euo pipefail; " + "; ".join(SETUP) + "; ").replace("{", "{{").replace("}", "}}"))


def env_fingerprint():
    """Installed distributions (dist-info names carry versions) + lock + nodes.

    When it changes, env re-runs and every stage that validated the old environment
    follows (rerun-triggers include params); otherwise everything stays cached.
    """
    h = hashlib.sha256()
    for p in sorted(PREFIX.glob("lib/python*/site-packages/*.dist-info")):
        h.update(p.name.encode())
    h.update(Path(LOCK).read_bytes() if Path(LOCK).exists() else b"")
    h.update(PARTITION_NODES.encode())
    return h.hexdigest()[:16]


def config_hash(stage):
    """Hash of the config sections the stage reads (ladder.stageconfig): a param, so editing
    one of them re-runs the stage and editing any other section does not."""
    return stageconfig.config_hash(stage, config)


def stage_config(stage):
    """The stage's config file (written by rule stage_config), an input of the stage."""
    return f"results/.config/{stage}.json"


# What every stage's shell needs; passed as params so provenance tracks them.
COMMON = {"py": PY}


FAULTS = config["faults"]
# The tune stage's verdict gates multinode only when its winner is applied there.
TUNE = config["tune"]["enabled"]
TUNE_OUTPUTS = [f"results/tune/{f}.json" for f in ("verdict", "best", "bench", "sweep")] if TUNE else []
TUNED_GATE = TUNE_OUTPUTS if config["tune"]["apply"] else []


def excluded_nodes():
    """Nodes a stage named as failed (results/<stage>/failed_nodes.txt), when exclusion is on.

    Read when a job is (re)submitted, so a retry of the same run already avoids them.
    Remove the files once the nodes are repaired.
    """
    if not FAULTS["exclude_on_failure"]:
        return []
    names = set()
    for f in Path("results").glob("*/failed_nodes.txt"):
        names.update(f.read_text().split())
    return sorted(names)


def node_count(wildcards, attempt):
    """Configured nodes; fewer only when nodes were excluded, too few remain and degraded runs are allowed."""
    if attempt == 1 and not excluded_nodes():
        return NODES
    available = len(PARTITION_NODES.split(",")) - len(excluded_nodes())
    return max(1, min(NODES, available)) if FAULTS["allow_degraded"] else NODES


def slurm_extra(wildcards, attempt):
    """sbatch flags the plugin has no resource for: failed nodes excluded, reservation, whole nodes."""
    excluded = excluded_nodes()
    flags = [f"--exclude={','.join(excluded)}"] if excluded else []
    if config["cluster"]["reservation"]:
        flags.append(f"--reservation={config['cluster']['reservation']}")
    if config["cluster"]["exclusive"]:
        flags.append("--exclusive")
    return " ".join(flags)


def mpi_launcher(wildcards, attempt):
    """`srun` for the plugin's MPI mode, or "" for a one-node job.

    The Slurm plugin refuses MPI jobs with one task, and Snakemake 9 loses that error in
    its submit thread: the run then waits forever. With "" the plugin skips its MPI
    checks, while the jobstep plugin (which tests only that the key exists) still leaves
    the rule's own srun as the top-level step instead of wrapping it in another.
    """
    return "srun" if node_count(wildcards, attempt) > 1 else ""


# cluster.one_allocation: the stage rules share this job group, so Snakemake submits the stages a
# run needs as one Slurm job (sized for the largest, wall time summed) and runs them inside it.
GROUP = "stages" if config["cluster"]["one_allocation"] else None


onstart:
    # The command line's settings exist once parsing is done; this runs before any job is submitted.
    if GROUP and not workflow.execution_settings.keep_incomplete:
        sys.exit("cluster.one_allocation needs --keep-incomplete (profile key `keep-incomplete: true`, as in "
                 "profiles/slurm): on a failed stage Snakemake would delete the outputs of every stage in the job")


def stage_resources(stage, nodes=1, mpi=False, gpus=True, mem_mb=None):
    """Slurm resources for one stage job (the plugin turns them into sbatch flags)."""
    c = config["cluster"]
    multi = nodes > 1
    res = {
        "nodes": node_count if multi else nodes,
        "tasks": node_count if multi else nodes,
        "cpus_per_task": c["cpus_per_node"],
        "mem_mb": mem_mb or c["mem_mb_per_node"],
        "runtime": preflight.stage_minutes(config, stage),
        "slurm_extra": slurm_extra,
    }
    # The plugin's own resources for the site's keys: a profile cannot drop them by accident.
    for key, resource in (("partition", "slurm_partition"), ("account", "slurm_account"), ("qos", "qos"),
                          ("constraint", "constraint")):
        if c[key]:
            res[resource] = c[key]
    if mpi:
        # The rule's own srun is the top-level step across all nodes (DESIGN.md §5).
        res["mpi"] = mpi_launcher if multi else ""
    elif GROUP:
        # A group's string resources must agree, and the jobstep plugin wraps only rules without the
        # key in `srun -n1`: a one-node stage then runs on the allocation's first node, as in its own job.
        res["mpi"] = mpi_launcher
    if (gpus or GROUP) and GPUS:
        # gres per node; `gpu=N` would mean N for the whole job.
        res["gres"] = slurm.gres(c)
        # The plugin adds --ntasks-per-gpu=<tasks> to any GPU job (issue #316), which Slurm
        # refuses with nodes=N tasks=N gres=gpu:K ("Requested node configuration is not
        # available"); 0 leaves it out.
        res["tasks_per_gpu"] = 0
    return res

