"""Snakemake's Slurm executor for ladder (`executor: slurm-ladder`, profiles/slurm): the real
snakemake-executor-plugin-slurm plus a watch on the run's pending jobs.

A job pending for a reason no wait can clear (more nodes, time or GPUs than the partition, QoS
or association allows; an account or QoS it may not use) would hold Snakemake for ever. At
each status check one squeue reads the reasons of this run's pending jobs (they carry the
run's id as job name): such a job is cancelled and fails with its reason. A job waiting on
nodes that are down, drained or reserved is reported when its reason changes and cancelled
once it has waited `faults.pending_patience_min` (config). Settings, submission, status and
cancellation are the plugin's own; its options take the prefix `slurm-ladder-`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncGenerator

from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
from snakemake_executor_plugin_slurm import ExecutorSettings, common_settings
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo

__all__ = ["Executor", "ExecutorSettings", "common_settings"]

# Pending reasons (squeue %r) that only a change of the job or of the site's limits clears.
NEVER = frozenset({
    "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
    "InvalidQOS", "AssocMaxWallDurationPerJobLimit", "QOSMaxWallDurationPerJobLimit", "AssocMaxNodesPerJobLimit",
    "QOSMaxNodePerJobLimit", "AssocMaxCpuPerJobLimit", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob",
    "AssocMaxGRESPerJob", "QOSMinGRES", "QOSMaxMemoryPerJob", "AssocMaxMemPerJob",
})
# Pending reasons that clear when nodes come back or a reservation ends: waited for, with patience.
NODES_AWAY = frozenset({"ReqNodeNotAvail", "Reservation", "NodeDown", "PartitionDown", "PartitionInactive"})
DEFAULT_PATIENCE_MIN = 30


def pending_reasons(name: str) -> dict[str, str]:
    """Slurm job id -> full pending reason for this run's pending jobs ({} when squeue fails)."""
    try:
        res = subprocess.run(["squeue", "-h", "-t", "PENDING", "--name", name, "-o", "%i|%r"],
                             capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return {}
    return dict(line.split("|", 1) for line in res.stdout.splitlines() if "|" in line) if res.returncode == 0 else {}


def verdict(reason: str, waited_s: float, patience_s: float) -> str | None:
    """Why to cancel a job pending for `reason` (its first word decides), or None to keep waiting."""
    key = reason.split(",")[0].strip()
    if key in NEVER:
        return f"can never start: {reason}"
    if key in NODES_AWAY and waited_s >= patience_s:
        return f"waited {waited_s / 60:.1f} min (faults.pending_patience_min) for unavailable nodes: {reason}"
    return None


class Executor(SlurmExecutor):
    async def check_active_jobs(self, active_jobs: list[SubmittedJobInfo]) -> AsyncGenerator[SubmittedJobInfo]:
        cancelled = self.cancel_hopeless(active_jobs)
        async for job in super().check_active_jobs([j for j in active_jobs if j not in cancelled]):
            yield job

    def cancel_hopeless(self, active_jobs: list[SubmittedJobInfo]) -> list[SubmittedJobInfo]:
        seen: dict[str, tuple[str, float]] = self.__dict__.setdefault("_pending_seen", {})
        patience = 60 * float(self.workflow.config.get("faults", {}).get("pending_patience_min",
                                                                          DEFAULT_PATIENCE_MIN))
        reasons = pending_reasons(self.run_uuid) if active_jobs else {}
        if not reasons:
            return []
        cancelled = []
        for job in active_jobs:
            jid = str(job.external_jobid).split(";")[0]
            reason = reasons.get(jid)
            if reason is None:
                continue
            if seen.get(jid, ("", 0))[0] != reason:
                seen[jid] = (reason, seen.get(jid, ("", time.monotonic()))[1])
                if reason not in ("None", "Resources", "Priority"):
                    self.logger.warning(f"Slurm job {jid} (rule {job.job.name}) is pending: {reason}")
            why = verdict(reason, time.monotonic() - seen[jid][1], patience)
            if why:
                subprocess.run(["scancel", jid], capture_output=True, timeout=30)
                self.report_job_error(job, msg=f"Slurm job {jid} (rule {job.job.name}) {why}; cancelled")
                cancelled.append(job)
        return cancelled
