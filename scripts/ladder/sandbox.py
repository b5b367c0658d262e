"""A real Slurm cluster on one machine: munge, slurmctld and N slurmd nodes.

Each node is a network namespace (own IP on a private bridge, no default route, so
all sandbox traffic stays on this machine), its own UTS namespace (own hostname) and
its own mount namespace with a private /dev/shm and a private /tmp (tmpfs each), so
Ray and vLLM behave as on separate hosts, and a file one node leaves in /tmp is seen
neither by the other nodes nor by the controller.  What must be shared (the state
directory, work directories, the venv, models) lives elsewhere, as on a site's shared
storage: ``up`` refuses a state directory under /tmp, which no node could read.
Every process we start is recorded by PID in ``state.json``;
``down`` stops exactly those (and anything still running inside our namespaces),
then removes the namespaces and the bridge.

    python -m ladder.sandbox up --nodes 3 --fake-gpus 2
    python -m ladder.sandbox status
    python -m ladder.sandbox down
    eval "$(python -m ladder.sandbox env)"    # SLURM_CONF for sbatch/srun/squeue
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from ladder import system
from ladder.logs import tail
from ladder.poll import poll
from ladder.preflight import node_local
from ladder.verdict import read_json

ROOT = Path(__file__).resolve().parents[2]


def default_state(instance: int) -> Path:
    return Path(os.environ.get("LADDER_SANDBOX", ROOT / (".sandbox" if instance == 0 else f".sandbox{instance}")))


# Several sandboxes can run side by side (e.g. a test session beside a demo): every
# name, the subnet and slurmctld's port derive from the instance number.
def bridge(instance: int) -> str:
    return f"ladder{instance}"


def ns_prefix(instance: int) -> str:
    return f"ladder{instance}-"


def veth(instance: int, node: str) -> str:
    return f"l{instance}-{node}"


FAKE_GPU_TYPE = "sim"  # gres type of --fake-gpus (cluster.gpu_type: sim asks for it)


@dataclass
class Spec:
    nodes: int = 2
    cpus: int = 2
    mem_mb: int = 8000
    fake_gpus: int = 0
    real_gpus: bool = False
    instance: int = 0
    subnet: str = ""  # management /24 (eth0, Slurm, default route), default 10.77.<instance>; bridge .1, node i .(10+i)
    shm_mb: int = 4096
    tmp_mb: int = 4096  # each node's private /tmp (tmpfs, RAM-backed: a limit, not a reservation); Slurm's TmpDisk
    fabric: str = ""  # fast-fabric /24 (ib0), default 10.78.<instance>, numbered like the management one
    accounting: bool = True  # slurmdbd on a MariaDB of its own, associations, limits and QoS enforced
    node_cpus: dict[str, int] = field(default_factory=dict)  # unequal nodes: node -> CPUs (else `cpus`)

    def __post_init__(self) -> None:
        self.subnet = self.subnet or f"10.77.{self.instance}"
        self.fabric = self.fabric or f"10.78.{self.instance}"

    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    def cpus_of(self, node: str) -> int:
        return self.node_cpus.get(node, self.cpus)

    def cpu_ids(self, node: str) -> list[int]:
        """The host cores a node's processes may run on: a node declared smaller than the host is
        confined to its last cores (inherited by its jobs, Ray and vLLM: a slower node for real)."""
        host = os.cpu_count() or 1
        return list(range(max(host - self.cpus_of(node), 0), host))

    def node_ip(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}"

    def fabric_ip(self, i: int) -> str:
        return f"{self.fabric}.{10 + i}"

    def port(self, offset: int) -> int:
        """Host ports of this instance: slurmctld +0, MariaDB +5, slurmdbd +6."""
        return 6817 + 10 * self.instance + offset


@dataclass
class State:
    spec: Spec
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid (slurmctld, munged, slurmd:n1, ...)
    started: float = 0.0


class SandboxError(RuntimeError):
    pass


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise SandboxError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def pid_alive(pid: int | None, name: str | None = None) -> bool:
    """Running (not a zombie), and when a name is given, its command line mentions it; False for no pid."""
    if not pid:
        return False  # psutil.Process(None) would be this process
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and (name is None or name in " ".join(p.cmdline()))
    except psutil.Error:
        return False


def load_state(state_dir: Path) -> State | None:
    raw = read_json(state_dir / "state.json")
    # A state from before the private /tmp (no tmp_mb) is another spec: `up` restarts it rather than reuse it.
    return State(spec=Spec(**{"tmp_mb": 0, **raw["spec"]}), pids=raw["pids"], started=raw["started"]) if raw else None


def save_state(state_dir: Path, state: State) -> None:
    (state_dir / "state.json").write_text(json.dumps(asdict(state), indent=1))


# ---------------------------------------------------------------- config files
def _dev_num(path: str) -> int:
    digits = "".join(ch for ch in Path(path).name if ch.isdigit())
    return int(digits) if digits else -1


def cuda_index_by_minor() -> dict[int, int]:
    """/dev/nvidia<minor> -> CUDA ordinal in PCI bus order (CUDA_DEVICE_ORDER=PCI_BUS_ID).

    Read from the driver's /proc/driver/nvidia/gpus/<pci>/information ("Device Minor");
    empty where that is not readable (the caller then takes minor = ordinal).
    """
    minors = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        with contextlib.suppress(OSError, ValueError):
            for line in info.read_text().splitlines():
                if line.startswith("Device Minor:"):
                    minors.append((info.parent.name.lower(), int(line.split(":", 1)[1])))
    return {minor: i for i, (_, minor) in enumerate(sorted(minors))}


def gpu_devices(spec: Spec, state_dir: Path, node: str, index: int) -> list[str]:
    if spec.real_gpus:
        # Numeric order: /dev/nvidia10 after /dev/nvidia9.
        devs = sorted((str(p) for p in Path("/dev").glob("nvidia[0-9]*")), key=_dev_num)
        per = len(devs) // spec.nodes
        if per == 0:
            raise SandboxError(f"--real-gpus: {len(devs)} /dev/nvidiaN devices for {spec.nodes} nodes")
        return devs[index * per : (index + 1) * per]
    # Slurm needs device files for gres; /dev/null symlinks schedule like GPUs. Numbered
    # across the machine (n2 of 2-GPU nodes has nvidia2, nvidia3), as real devices are.
    d = state_dir / "dev" / node
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for g in range(index * spec.fake_gpus, (index + 1) * spec.fake_gpus):
        link = d / f"nvidia{g}"
        if not link.is_symlink():
            link.symlink_to("/dev/null")
        out.append(str(link))
    return out


def gpu_map(spec: Spec, state_dir: Path) -> dict[str, list[int]]:
    """node -> the CUDA ordinals (PCI order) of the machine's GPUs that node owns."""
    order = cuda_index_by_minor() if spec.real_gpus else {}
    out = {}
    for i, node in enumerate(spec.node_names()):
        devs = gpu_devices(spec, state_dir, node, i) if (spec.fake_gpus or spec.real_gpus) else []
        out[node] = [order.get(_dev_num(d), _dev_num(d)) for d in devs]
    return out


def task_prolog(gpus: dict[str, list[int]]) -> str:
    """Slurm TaskProlog: CUDA_VISIBLE_DEVICES as separate hosts would see it.

    All sandbox nodes share one machine's GPUs. Slurm 22.05 sets CUDA_VISIBLE_DEVICES to a
    GPU's index in its node's gres list (0,1 on every node), which on separate hosts selects
    that host's own GPUs but here would put every node on GPUs 0,1. This maps each index to
    the node's own GPUs (an index the node does not have is kept: already physical), and gives
    a task without a GPU request its node's GPUs, as on a host of its own.
    """
    cases = "\n".join(f"  {node}) set -- {' '.join(map(str, ids))} ;;" for node, ids in gpus.items() if ids)
    return f"""#!/bin/sh
# written by ladder.sandbox (TaskProlog): see ladder.sandbox.task_prolog
case "$SLURMD_NODENAME" in
{cases}
  *) exit 0 ;;
esac
echo "export CUDA_DEVICE_ORDER=PCI_BUS_ID"
if [ -z "${{CUDA_VISIBLE_DEVICES+x}}" ]; then
  out=$(echo "$@" | tr ' ' ',')
else
  out=""
  for idx in $(echo "$CUDA_VISIBLE_DEVICES" | tr ',' ' '); do
    dev=$idx
    case "$idx" in
      *[!0-9]*) ;;
      *) [ "$idx" -lt $# ] && eval "dev=\\${{$((idx + 1))}}" ;;
    esac
    out="${{out:+$out,}}$dev"
  done
fi
echo "export CUDA_VISIBLE_DEVICES=$out"
"""


def write_configs(spec: Spec, state_dir: Path) -> Path:
    etc = state_dir / "etc"
    for sub in ("etc", "log", "run", "spool/ctld"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    # Fake GPUs are typed as a site's are (gpu:<type>:N); a request without a type still matches.
    typed = f" Type={FAKE_GPU_TYPE}" if spec.fake_gpus else ""
    gpus_per_node, gres_lines = 0, ["AutoDetect=off"]
    for i, node in enumerate(spec.node_names()):
        devs = gpu_devices(spec, state_dir, node, i) if (spec.fake_gpus or spec.real_gpus) else []
        gpus_per_node = len(devs)
        gres_lines += [f"NodeName={node} Name=gpu{typed} File={dev}" for dev in devs]
    gres = f" Gres=gpu:{FAKE_GPU_TYPE + ':' if spec.fake_gpus else ''}{gpus_per_node}" if gpus_per_node else ""
    prolog_line = ""
    if gpus_per_node:
        prolog = etc / "task_prolog.sh"
        prolog.write_text(task_prolog(gpu_map(spec, state_dir)))
        prolog.chmod(0o755)
        prolog_line = f"TaskProlog={prolog}\n"
    nodes = "\n".join(
        f"NodeName={n} NodeAddr={spec.node_ip(i + 1)} CPUs={spec.cpus_of(n)} RealMemory={spec.mem_mb}"
        f" TmpDisk={spec.tmp_mb}{gres} State=UNKNOWN"
        for i, n in enumerate(spec.node_names())
    )
    conf = f"""# written by ladder.sandbox; do not edit (re-run `up` with other options)
ClusterName=ladder
SlurmctldHost={host}({spec.subnet}.1)
SlurmctldPort={spec.port(0)}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={state_dir}/spool/ctld
SlurmdSpoolDir={state_dir}/spool/%n
SlurmctldPidFile={state_dir}/run/slurmctld.pid
SlurmdPidFile={state_dir}/run/slurmd-%n.pid
SlurmctldLogFile={state_dir}/log/slurmctld.log
SlurmdLogFile={state_dir}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
KillWait=10
GresTypes=gpu
MpiDefault=none
SchedulerParameters=bf_interval=5
SlurmdTimeout=30
{accounting_lines(spec)}{prolog_line}{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    (etc / "slurm.conf").write_text(conf)
    (etc / "gres.conf").write_text("\n".join(gres_lines) + "\n")
    # No cgroup enforcement (proctrack/linuxproc, task/none). Slurm 22.05 autodetects the
    # cgroup plugin all the same: on a cgroup-v2 host (the GPU machines) cgroup/v2 needs
    # systemd over dbus and slurmd refuses to start without it; cgroup/v1 only loads.
    (etc / "cgroup.conf").write_text("# written by ladder.sandbox\nCgroupPlugin=cgroup/v1\n")
    return etc / "slurm.conf"


# ---------------------------------------------------------------- accounting
# A site's accounting: slurmdbd on MariaDB, jobs charged to account ACCOUNT (root's default), a job
# with an account Slurm does not know refused at submission, QoS QOS with a wall-time limit.
ACCOUNT, QOS, QOS_MAX_WALL = "lab", "short", "00:05:00"
DB_PASS = "ladder-sandbox"  # MariaDB listens on the bridge address only, for this sandbox's slurmdbd


def accounting_lines(spec: Spec) -> str:
    if not spec.accounting:
        return ""
    return (f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost={spec.subnet}.1\n"
            f"AccountingStoragePort={spec.port(6)}\nAccountingStorageEnforce=associations,limits,qos\n"
            "JobAcctGatherType=jobacct_gather/none\n")


def start_accounting(spec: Spec, state_dir: Path, env: dict[str, str], state: State, timeout: float) -> None:
    """MariaDB (own data dir, socket and port), then slurmdbd; slurmctld registers the cluster."""
    db = state_dir / "mysql"
    cnf = db / "my.cnf"
    db.mkdir(parents=True, exist_ok=True)
    cnf.write_text(f"""[mysqld]
user=root
datadir={db}/data
socket={db}/mysqld.sock
port={spec.port(5)}
bind-address={spec.subnet}.1
pid-file={db}/mysqld.pid
log-error={state_dir}/log/mariadb.log
skip-name-resolve
innodb_buffer_pool_size=256M
innodb_lock_wait_timeout=900
[client]
socket={db}/mysqld.sock
""")
    if not (db / "data" / "mysql").is_dir():
        sh("mariadb-install-db", f"--defaults-file={cnf}", "--user=root", "--auth-root-authentication-method=socket")
    state.pids["mariadbd"] = spawn(["mariadbd", f"--defaults-file={cnf}"], state_dir / "log" / "mariadbd.out", env)
    sql = ["mariadb", f"--defaults-file={cnf}", "-u", "root"]
    wait_for("mariadbd", lambda: subprocess.run([*sql, "-e", "select 1"], capture_output=True).returncode == 0,
             timeout, state_dir / "log" / "mariadb.log")
    grants = "".join(f"CREATE USER IF NOT EXISTS 'slurm'@'{h}' IDENTIFIED BY '{DB_PASS}'; GRANT ALL ON "
                     f"slurm_acct_db.* TO 'slurm'@'{h}'; " for h in (f"{spec.subnet}.1", "localhost"))
    subprocess.run([*sql, "-e", grants], check=True, capture_output=True)
    dbd_conf = state_dir / "etc" / "slurmdbd.conf"  # slurmdbd reads it beside $SLURM_CONF; root, mode 600
    dbd_conf.write_text(f"""# written by ladder.sandbox
AuthType=auth/munge
DbdHost=localhost
DbdAddr={spec.subnet}.1
DbdPort={spec.port(6)}
SlurmUser=root
PidFile={state_dir}/run/slurmdbd.pid
LogFile={state_dir}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost={spec.subnet}.1
StoragePort={spec.port(5)}
StorageUser=slurm
StoragePass={DB_PASS}
StorageLoc=slurm_acct_db
""")
    dbd_conf.chmod(0o600)
    state.pids["slurmdbd"] = spawn(["slurmdbd", "-D"], state_dir / "log" / "slurmdbd.out", env)
    wait_for("slurmdbd", lambda: subprocess.run(["sacctmgr", "-n", "show", "cluster"], env=env,
                                                capture_output=True).returncode == 0,
             timeout, state_dir / "log" / "slurmdbd.log")


def add_associations(env: dict[str, str]) -> None:
    """Account, root's association with it as default, and the QoS; idempotent (sacctmgr -i)."""
    for cmd in (["add", "qos", QOS, f"MaxWall={QOS_MAX_WALL}"],
                ["add", "account", ACCOUNT, f"Description={ACCOUNT}", f"Organization={ACCOUNT}"],
                ["add", "user", "root", f"Account={ACCOUNT}", f"DefaultAccount={ACCOUNT}"],
                ["modify", "user", "root", "where", f"account={ACCOUNT}", "set", f"qos+={QOS}"]):
        res = subprocess.run(["sacctmgr", "-i", *cmd], env=env, capture_output=True, text=True)
        if res.returncode != 0 and not any(m in res.stdout + res.stderr for m in ("already exists", "Nothing new")):
            raise SandboxError(f"sacctmgr {' '.join(cmd)} failed: {res.stdout.strip()} {res.stderr.strip()}")


# ---------------------------------------------------------------- network
def net_up(spec: Spec) -> None:
    """Each node as a site's GPU node has it: eth0 on the management network with the default route
    (Slurm's NodeAddr), ib0 on a fabric network of its own (named like IPoIB), and docker0, a bridge
    address that reaches no other node (172.17.0.1 on every node)."""
    nets = [(bridge(spec.instance), spec.subnet, "eth0", ""), (bridge(spec.instance) + "ib", spec.fabric, "ib0", "i")]
    for br, subnet, _, _ in nets:
        if sh("ip", "link", "show", br, check=False).returncode != 0:
            sh("ip", "link", "add", br, "type", "bridge")
        sh("ip", "addr", "replace", f"{subnet}.1/24", "dev", br)
        sh("ip", "link", "set", br, "up")
    for i, node in enumerate(spec.node_names(), start=1):
        ns = ns_prefix(spec.instance) + node
        if not Path(f"/run/netns/{ns}").exists():
            sh("ip", "netns", "add", ns)
        for br, subnet, name, suffix in nets:
            host_if = veth(spec.instance, node) + suffix
            if sh("ip", "link", "show", host_if, check=False).returncode != 0:
                sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", name, "netns", ns)
            sh("ip", "link", "set", host_if, "master", br, "up")
            sh("ip", "-n", ns, "addr", "replace", f"{subnet}.{10 + i}/24", "dev", name)
            sh("ip", "-n", ns, "link", "set", name, "up")
        if sh("ip", "-n", ns, "link", "show", "docker0", check=False).returncode != 0:
            sh("ip", "-n", ns, "link", "add", "docker0", "type", "bridge")  # no ports, like an idle docker0
        sh("ip", "-n", ns, "addr", "replace", "172.17.0.1/16", "dev", "docker0")
        sh("ip", "-n", ns, "link", "set", "docker0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "replace", "default", "via", f"{spec.subnet}.1", "dev", "eth0")


def our_namespaces(instance: int) -> list[str]:
    d = Path("/run/netns")
    return sorted(p.name for p in d.glob(ns_prefix(instance) + "*")) if d.exists() else []


def pids_in_namespaces(instance: int) -> list[int]:
    """Every process whose network namespace is one of ours (job steps, Ray, vLLM, slurmd)."""
    return [int(pid) for ns in our_namespaces(instance)
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split()]


def net_down(instance: int) -> None:
    for ns in our_namespaces(instance):
        node = ns[len(ns_prefix(instance)) :]
        for host_if in (veth(instance, node), veth(instance, node) + "i"):
            sh("ip", "link", "del", host_if, check=False)
        sh("ip", "netns", "del", ns, check=False)
    for br in (bridge(instance), bridge(instance) + "ib"):
        sh("ip", "link", "del", br, check=False)


# ---------------------------------------------------------------- daemons
def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """A process that outlives the one that starts it (own session, its own log, no stdin)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True).pid


def wait_for(what: str, pred: Callable[[], bool], timeout: float, log: Path) -> None:
    if not poll(pred, timeout):
        raise SandboxError(f"{what} not ready after {timeout:.0f}s; last lines of {log}:\n{tail(log)}")


def munge_ok() -> bool:
    enc = subprocess.run(["munge", "-n"], capture_output=True)
    return enc.returncode == 0 and subprocess.run(["unmunge"], input=enc.stdout, capture_output=True).returncode == 0


def start_munge(state_dir: Path, env: dict[str, str]) -> int | None:
    if munge_ok():
        return None  # a munged is already serving; not ours to stop
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    log = state_dir / "log" / "munged.log"
    pid = spawn(["munged", "--foreground", "--force"], log, env)
    wait_for("munged", munge_ok, 15, log)
    return pid


def sinfo_nodes(env: dict[str, str]) -> dict[str, str]:
    p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {}
    return dict(line.split() for line in p.stdout.splitlines() if line.strip())


def slurm_env(state_dir: Path) -> dict[str, str]:
    return dict(os.environ, SLURM_CONF=str(state_dir / "etc" / "slurm.conf"))


def up(spec: Spec, state_dir: Path, timeout: float = 60) -> State:
    state_dir = state_dir.resolve()
    old = load_state(state_dir)
    if old and old.spec == spec and all(pid_alive(p) for p in old.pids.values()):
        nodes = sinfo_nodes(slurm_env(state_dir))  # {} when no slurmctld answers (stale state, reused PIDs)
        if len(nodes) == spec.nodes and all(s in ("idle", "mix", "alloc") for s in nodes.values()):
            print(f"sandbox already up: {len(old.spec.node_names())} nodes ({state_dir})")
            return old
    if node_local(state_dir, ROOT):
        raise SandboxError(f"state directory {state_dir} is under /tmp, which every node has a private one of: "
                           "slurmd could not read its config or spool there (use --state elsewhere)")
    if old or our_namespaces(spec.instance):
        down(state_dir, spec.instance, quiet=True)
    system.ensure("sandbox", *(["accounting"] if spec.accounting else []))
    state_dir.mkdir(parents=True, exist_ok=True)
    conf = write_configs(spec, state_dir)
    env = slurm_env(state_dir)
    state = State(spec=spec, started=time.time())
    if munge_pid := start_munge(state_dir, env):
        state.pids["munged"] = munge_pid
    net_up(spec)
    save_state(state_dir, state)
    if spec.accounting:  # before slurmctld: with an empty state dir it must reach slurmdbd to start
        start_accounting(spec, state_dir, env, state, timeout)
        save_state(state_dir, state)
    ctld_log = state_dir / "log" / "slurmctld.log"
    # -c: forget jobs and node states of an earlier sandbox (a job still "running" after a
    # kill -9 would hold its nodes in state mix forever); -i: ignore unreadable state files.
    state.pids["slurmctld"] = spawn(["slurmctld", "-D", "-c", "-i", "-f", str(conf)],
                                    state_dir / "log" / "slurmctld.out", env)
    save_state(state_dir, state)
    wait_for("slurmctld", lambda: subprocess.run(["scontrol", "ping"], env=env, capture_output=True,
                                                 text=True).stdout.count("UP") > 0, timeout, ctld_log)
    if spec.accounting:
        add_associations(env)
    Path("/etc/slurm").mkdir(exist_ok=True)
    # A site's name service for the nodes: every node's name resolves (Gloo, Ray and vLLM look up their
    # own host name), and with no nameserver a lookup of anything else fails at once instead of
    # timing out against the host's resolver, which a node cannot reach (10-20 s a lookup).
    names = state_dir / "names"
    names.mkdir(exist_ok=True)
    (names / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n" + "".join(
        f"{spec.node_ip(i)} {node}\n" for i, node in enumerate(spec.node_names(), start=1)))
    (names / "resolv.conf").write_text("# sandbox node: names come from /etc/hosts only\n")
    # A checkout under the host's /tmp (some CI runners) stays visible at its path: it is the storage
    # every node shares, so each node binds it aside before its private /tmp and moves it back.
    repo_in_tmp = node_local(ROOT)
    for node in spec.node_names():
        (state_dir / "spool" / node).mkdir(parents=True, exist_ok=True)
        # Inside the node's own mount namespace: a private /dev/shm and /tmp (separate hosts do
        # not share them; sticky and world-writable as a host's) and our config at Slurm's default
        # path, because the Snakemake jobstep plugin strips SLURM_CONF before its nested srun.
        cores = spec.cpu_ids(node)
        confine = f"taskset -c {','.join(map(str, cores))} " if len(cores) < (os.cpu_count() or 1) else ""
        keep = ("", "")
        if repo_in_tmp:
            hold = Path(f"/run/{ns_prefix(spec.instance)}{node}-repo")
            hold.mkdir(parents=True, exist_ok=True)
            keep = (f" && mount --bind {ROOT} {hold}", f" && mkdir -p {ROOT} && mount --move {hold} {ROOT}")
        inner = (f"hostname {node} && mount -t tmpfs -o size={spec.shm_mb}m,mode=1777 ladder-shm /dev/shm{keep[0]}"
                 f" && mount -t tmpfs -o size={spec.tmp_mb}m,mode=1777 ladder-tmp /tmp{keep[1]}"
                 f" && mount --bind {conf.parent} /etc/slurm && mount --bind {names}/hosts /etc/hosts"
                 f" && mount --bind {names}/resolv.conf /etc/resolv.conf && exec {confine}slurmd -D -N {node}")
        cmd = ["nsenter", f"--net=/run/netns/{ns_prefix(spec.instance)}{node}", "unshare", "--uts", "--mount",
               "--propagation", "private", "sh", "-c", inner]
        state.pids[f"slurmd:{node}"] = spawn(cmd, state_dir / "log" / f"slurmd-{node}.out", env)
        save_state(state_dir, state)

    def all_idle() -> bool:
        for role, pid in state.pids.items():
            if not pid_alive(pid):
                log = state_dir / "log" / (role.replace(":", "-") + ".out")
                raise SandboxError(f"{role} (pid {pid}) exited during start; last lines of {log}:\n{tail(log)}")
        nodes = sinfo_nodes(env)
        return len(nodes) == spec.nodes and all(s.rstrip("*") == "idle" for s in nodes.values())

    try:
        wait_for(f"{spec.nodes} slurmd nodes idle", all_idle, timeout, ctld_log)
    except SandboxError as err:
        raise SandboxError(f"{err}\nsinfo: {sinfo_nodes(env)}") from None
    print(f"sandbox up: {spec.nodes} nodes {spec.node_names()} on {spec.subnet}.0/24, fabric ib0 on "
          f"{spec.fabric}.0/24 ({state_dir})")
    return state


def stop_pids(pids: list[int], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL whatever is still running after ``grace`` seconds."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)


def down(state_dir: Path, instance: int = 0, quiet: bool = False) -> None:
    state_dir = state_dir.resolve()
    state = load_state(state_dir)
    ours = []
    if state:
        instance = state.spec.instance
        others = [ns for ns in (Path("/run/netns").glob("ladder*-*")) if not ns.name.startswith(ns_prefix(instance))]
        for role, pid in state.pids.items():
            if role == "munged" and others:
                continue  # another sandbox still authenticates through it
            if pid_alive(pid, role.split(":")[0]):  # a role is named after its daemon (slurmd:n1: slurmd)
                ours.append(pid)
    # Jobs, Ray and vLLM left inside our nodes (e.g. after slurmd was killed -9).
    ours += [p for p in pids_in_namespaces(instance) if p not in ours]
    stop_pids(ours)
    net_down(instance)
    for hold in Path("/run").glob(f"{ns_prefix(instance)}*-repo"):  # up's mount points for a checkout in /tmp
        with contextlib.suppress(OSError):
            hold.rmdir()
    if state:
        (state_dir / "state.json").unlink(missing_ok=True)
    if not quiet:
        print(f"sandbox down: stopped {len(ours)} processes, removed namespaces and {bridge(instance)}")


def status(state_dir: Path) -> int:
    state = load_state(state_dir.resolve())
    if not state:
        print("sandbox: not up")
        return 1
    ok = True
    for role, pid in state.pids.items():
        alive = pid_alive(pid)
        ok &= alive
        print(f"{role:14s} pid {pid:7d} {'running' if alive else 'DEAD'}")
    nodes = sinfo_nodes(slurm_env(state_dir.resolve()))
    for n, s in sorted(nodes.items()):
        print(f"node {n:9s} {s}")
    ok &= len(nodes) == state.spec.nodes
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ladder-sandbox", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instance", type=int, default=0, choices=range(10),
                    help="sandbox number, for several side by side (default 0)")
    ap.add_argument("--state", type=Path, help="state directory (default: .sandbox, .sandbox<instance>)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="install what is missing and start the cluster (idempotent)")
    u.add_argument("--nodes", type=int, default=2, choices=range(1, 17), metavar="N",
                   help="slurmd nodes, 1 to 16 (default 2)")
    u.add_argument("--cpus", type=int, default=2, help="CPUs each node offers to Slurm")
    u.add_argument("--node-cpus", action="append", default=[], metavar="NODE=N",
                   help="a node with N CPUs instead (unequal nodes), confined to the host's last N cores")
    u.add_argument("--mem-mb", type=int, default=8000, help="memory each node offers to Slurm (MB)")
    u.add_argument("--tmp-mb", type=int, default=Spec.tmp_mb, help="size of each node's private /tmp (MB)")
    gpus = u.add_mutually_exclusive_group()
    gpus.add_argument("--fake-gpus", type=int, default=0, help="fake GPU gres per node (scheduling tests)")
    gpus.add_argument("--real-gpus", action="store_true", help="split this machine's /dev/nvidiaN over the nodes")
    u.add_argument("--no-accounting", dest="accounting", action="store_false",
                   help="no slurmdbd/MariaDB (machines without them, e.g. the GPU bundle)")
    u.add_argument("--subnet", default="", help="first three octets of the private /24 (default 10.77.<instance>)")
    u.add_argument("--timeout", type=float, default=60, help="seconds to wait for every node to be idle")
    sub.add_parser("status", help="show daemons and node states; exit 1 unless all are up")
    sub.add_parser("down", help="stop what `up` started and remove namespaces and bridge")
    sub.add_parser("env", help="print the shell export that points Slurm commands at the sandbox")
    a = ap.parse_args(argv)
    a.state = a.state or default_state(a.instance)
    if a.cmd == "up":
        try:
            node_cpus = {n: int(c) for n, c in (item.split("=", 1) for item in a.node_cpus)}
        except ValueError:
            ap.error(f"--node-cpus takes NODE=N, got {a.node_cpus}")
        if unknown := set(node_cpus) - set(Spec(nodes=a.nodes).node_names()):
            ap.error(f"--node-cpus: no node {sorted(unknown)} among n1..n{a.nodes}")
        spec = Spec(nodes=a.nodes, cpus=a.cpus, mem_mb=a.mem_mb, fake_gpus=a.fake_gpus, real_gpus=a.real_gpus,
                    subnet=a.subnet, instance=a.instance, accounting=a.accounting, node_cpus=node_cpus,
                    tmp_mb=a.tmp_mb)
        try:
            up(spec, a.state, a.timeout)
        except SandboxError as err:
            print(f"sandbox up failed: {err}", file=sys.stderr)
            return 1
        return 0
    if a.cmd == "down":
        down(a.state, a.instance)
        return 0
    if a.cmd == "env":
        print(f"export SLURM_CONF={(a.state.resolve() / 'etc' / 'slurm.conf')}")
        return 0
    return status(a.state)


if __name__ == "__main__":
    sys.exit(main())
