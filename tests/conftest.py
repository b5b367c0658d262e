"""Shared fixtures: the test sandbox cluster and a runner for the real DAG.

``sandbox`` (session) brings up sandbox instance $LADDER_TEST_SANDBOX (default 7) with
3 nodes once per session and takes it down at the end unless LADDER_KEEP_SANDBOX=1.
``run_dag`` runs ``snakemake --profile profiles/sandbox`` in an isolated work directory
with a config written from config/config.yaml with per-test overrides merged in (recursively).
``two_node_run`` (session) is the whole ladder on 2 nodes that the ladder and deploy tests share.

tmp_path and tmp_path_factory live under <repo>/.cache/pytest (pytest's numbered pytest-of-<user>/pytest-N
directories, so sessions side by side each get their own), not /tmp: the sandbox nodes each have a /tmp of
their own, and a work directory there would be seen by none of them. A --basetemp (or
PYTEST_DEBUG_TEMPROOT) under /tmp is refused for a session that runs sandbox or GPU tests.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from snakemake.utils import update_config

from ladder.preflight import node_local

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SANDBOX_NODES = 3  # both 2- and 3-node stages fit
# The session's ladder run (two_node_run): its key, and 2 nodes with the default bench (closed and
# open loop, 3 repetitions) with prompts longer than two of vLLM's 128-token CPU cache blocks (so a prompt
# sent again would be a prefix-cache hit, which single's `bench_prompts_prefilled` checks), the tune stage (a
# small search: 2 rates, 20 requests a run), a 30 s soak.
API_KEY = "ladder-test-" + secrets.token_hex(12)
TWO = {"cluster": {"nodes": 2}, "bench": {"soak_s": 30, "input_len": 272},
       "tune": {"rates": [8, 16], "extend_rates": 0, "num_prompts": 20, "warmup_prompts": 2}}


SHARED_TEMPROOT = ROOT / ".cache" / "pytest"  # ignored by git (/.cache)


def pytest_configure(config: pytest.Config) -> None:
    """Tests' temporary directories on storage the sandbox nodes share, unless the user chose them."""
    if config.option.basetemp is None and "PYTEST_DEBUG_TEMPROOT" not in os.environ:
        SHARED_TEMPROOT.mkdir(parents=True, exist_ok=True)
        # Read by pytest's TempPathFactory when the first tmp_path is made; numbered dirs, 3 kept.
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(SHARED_TEMPROOT)


def temp_root(config: pytest.Config) -> Path:
    given = config.option.basetemp or os.environ.get("PYTEST_DEBUG_TEMPROOT") or "/tmp"
    return Path(given).resolve()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail before any test runs when sandbox or GPU tests would make their work dirs in /tmp."""
    root = temp_root(session.config)
    if not node_local(root, ROOT):  # the checkout is shared storage, wherever it is
        return
    if any({"sandbox", "gpu"} & {m.name for m in item.iter_markers()} for item in session.items):
        raise pytest.UsageError(
            f"temporary directories under {root}: each sandbox node has a private /tmp, so the nodes would not "
            f"see the tests' work directories. Drop --basetemp (default: {SHARED_TEMPROOT}) or point it at "
            "shared storage (outside /tmp).")


def repo_config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text()) or {}


# vLLM's graphs traced by Dynamo but run by its eager backend, not compiled by Inductor: a start with a
# new model or pipeline shape takes ~12 s of compile warm-up instead of ~50 s on 2 cores (measured on
# the mistral family test), and the tests start many. Not --enforce-eager / -O0: with compilation off,
# PP=2 over Ray on CPU fails at the first request (vLLM 0.32; see test_families.py).
TEST_SERVE_ARGS = ["--compilation-config.backend=eager"]


def make_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The repo's config + the tests' serve args + overrides, with env.prefix absolute (the repo's .venv)."""
    cfg = repo_config()
    cfg.setdefault("serve", {})["extra_args"] = [*cfg.get("serve", {}).get("extra_args", []), *TEST_SERVE_ARGS]
    update_config(cfg, overrides or {})
    prefix = Path(cfg.get("env", {}).get("prefix", ".venv"))
    cfg.setdefault("env", {})["prefix"] = str(prefix if prefix.is_absolute() else ROOT / prefix)
    return cfg


@dataclass
class Sandbox:
    instance: int
    nodes: int
    state_dir: Path

    @property
    def slurm_conf(self) -> Path:
        return self.state_dir / "etc" / "slurm.conf"

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment pointed at the sandbox (and the venv's tools), plus extra."""
        env = dict(os.environ, SLURM_CONF=str(self.slurm_conf), PATH=f"{BIN}:{os.environ.get('PATH', '')}")
        env.update(extra)
        return env

    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    def node_ip(self, i: int) -> str:
        """Management address (eth0: Slurm, default route)."""
        return f"10.77.{self.instance}.{10 + i}"

    def fabric_ip(self, i: int) -> str:
        """Fast-fabric address (ib0): Ray, vLLM, NCCL and Gloo use it."""
        return f"10.78.{self.instance}.{10 + i}"

    def slurm(self, *cmd: str, timeout: float = 30) -> str:
        res = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"{' '.join(cmd)} failed: {res.stderr}"
        return res.stdout

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """python -m ladder.sandbox --instance <this one> ARGS."""
        return subprocess.run([sys.executable, "-m", "ladder.sandbox", "--instance", str(self.instance), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def stray_processes(self) -> list[str]:
        """Processes inside the node namespaces other than slurmd: Ray, vLLM, srun steps left behind."""
        from ladder.sandbox import pids_in_namespaces

        out = []
        for pid in pids_in_namespaces(self.instance):
            try:
                cmd = " ".join(psutil.Process(pid).cmdline())
            except psutil.Error:
                continue
            if cmd and not cmd.startswith(("slurmd", "/usr/sbin/slurmd")):
                out.append(f"{pid}: {cmd[:160]}")
        return out

    def running_jobs(self) -> str:
        return self.slurm("squeue", "-h", "-t", "running,pending", "-o", "%i %j %T")

    def job_ids(self) -> set[int]:
        """Every job slurmctld remembers (MinJobAge=3600 keeps finished ones)."""
        out = self.slurm("squeue", "-h", "-t", "all", "-o", "%i")
        return {int(x) for x in out.split()}


def instance_from_env(var: str, default: int) -> int:
    instance = int(os.environ.get(var, str(default)))
    if instance in (0, 1):
        pytest.fail(f"{var} must not be 0 or 1 (the demo's and the developer's sandboxes)")
    return instance


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The session's cluster: up once (idempotent), down at the end unless LADDER_KEEP_SANDBOX=1."""
    instance = instance_from_env("LADDER_TEST_SANDBOX", 7)
    sb = Sandbox(instance, SANDBOX_NODES, ROOT / f".sandbox{instance}")
    res = sb.cli("up", "--nodes", str(SANDBOX_NODES))
    assert res.returncode == 0, f"sandbox up failed:\n{res.stdout}\n{res.stderr}"
    assert sb.slurm_conf.exists(), sb.slurm_conf
    yield sb
    if os.environ.get("LADDER_KEEP_SANDBOX") != "1":
        res = sb.cli("down")
        assert res.returncode == 0, f"sandbox down failed:\n{res.stdout}\n{res.stderr}"


@pytest.fixture
def spare_sandbox() -> Iterator[Sandbox]:
    """A second instance ($LADDER_TEST_SPARE_SANDBOX, default 8; 2 nodes) for up/down tests; not started."""
    instance = instance_from_env("LADDER_TEST_SPARE_SANDBOX", 8)
    sb = Sandbox(instance, 2, ROOT / f".sandbox{instance}")
    yield sb
    sb.cli("down")  # whatever a failed test left


@dataclass
class DagRun:
    returncode: int
    stdout: str  # stdout and stderr together, in order
    elapsed: float
    workdir: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def results(self) -> Path:
        return self.workdir / "results"

    def submitted(self) -> dict[str, int]:
        """rule (or job group: stages_<rules>) -> Slurm job id, from the plugin's 'submitted with SLURM jobid' lines."""
        return {m[1]: int(m[0]) for m in re.findall(r"SLURM jobid (\d+) \(log: \S*/(?:rule|group)_(\w+)/",
                                                    self.stdout)}


RunDag = Callable[..., DagRun]


def run_snakemake(sandbox: Sandbox, *targets: str, workdir: Path, overrides: dict[str, Any] | None = None,
                  config: dict[str, Any] | None = None, timeout: float = 600, extra: tuple[str, ...] = (),
                  env: dict[str, str] | None = None, profile: str = "sandbox",
                  configfiles: tuple[Path, ...] = ()) -> DagRun:
    """``snakemake --profile profiles/<profile> TARGETS`` in ``workdir`` with the repo's config + overrides
    (or config= whole), then `configfiles` on top; extra are more snakemake arguments; env adds
    variables. Module fixtures share one run between tests through this."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = config if config is not None else make_config(overrides)
    cfg_file = workdir / "test-config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(cfg_file), *map(str, configfiles), "--profile", str(ROOT / "profiles" / profile),
           *extra, *targets]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=workdir, env=sandbox.env(**(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM lets Snakemake scancel its jobs; then make sure it is gone.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"snakemake {' '.join(targets)} timed out after {timeout}s:\n{out[-4000:]}")
    return DagRun(proc.returncode, out, time.monotonic() - t0, workdir, cfg)


@pytest.fixture
def run_dag(sandbox: Sandbox, tmp_path: Path) -> RunDag:
    """run_dag(*targets, workdir=None, **kw) -> DagRun: run_snakemake in a fresh tmp dir unless workdir is given."""

    def run(*targets: str, workdir: Path | None = None, **kw: Any) -> DagRun:
        return run_snakemake(sandbox, *targets, workdir=workdir or tmp_path / "work", **kw)

    return run


@pytest.fixture(scope="session")
def ladder_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ladder")


@pytest.fixture(scope="session")
def two_node_run(sandbox, ladder_workdir) -> DagRun:
    """The whole ladder on 2 nodes, once per session: the ladder tests read it, deploy starts from it
    (env, probe and ray stay cached for the tests that use the work dir)."""
    return run_snakemake(sandbox, "all", overrides=TWO, workdir=ladder_workdir, timeout=2400,
                         env={"LADDER_API_KEY": API_KEY})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests without a kind marker get one from their folder, so `-m unit` / `-m sandbox` miss none."""
    kinds = {"unit", "sandbox", "gpu", "registry"}
    for item in items:
        if kinds & {m.name for m in item.iter_markers()}:
            continue
        parts = Path(str(item.fspath)).relative_to(ROOT).parts
        if "unit" in parts:
            item.add_marker(pytest.mark.unit)
        elif "integration" in parts:
            item.add_marker(pytest.mark.sandbox)
