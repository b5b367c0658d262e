"""Snakemake's Slurm executor for the embedded sandbox (`executor: slurm-sandbox`): ladder's
(snakemake_executor_plugin_slurm_ladder: the real snakemake-executor-plugin-slurm plus the
watch on pending jobs) with one change, its status-check back-off capped.

After every status check that found no job finished the plugin adds 10 s to the wait before
the next one (up to 180 s), whatever `seconds-between-status-checks` says. That spares sacct
on a busy site (profiles/slurm keeps it), but on the sandbox, where squeue asks a local
slurmctld, it noticed a finished stage up to ~40 s late and held a failed run that long
before exiting (bench/orchestration.py measures both). Here the wait never exceeds
`seconds-between-status-checks`. Its options take the prefix `slurm-sandbox-`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo

from snakemake_executor_plugin_slurm_ladder import Executor as LadderExecutor
from snakemake_executor_plugin_slurm_ladder import ExecutorSettings, common_settings

__all__ = ["Executor", "ExecutorSettings", "common_settings"]


class Executor(LadderExecutor):
    async def check_active_jobs(self, active_jobs: list[SubmittedJobInfo]) -> AsyncGenerator[SubmittedJobInfo]:
        async for job in super().check_active_jobs(active_jobs):
            yield job
        cap = self.workflow.remote_execution_settings.seconds_between_status_checks
        self.next_seconds_between_status_checks = min(self.next_seconds_between_status_checks, cap)
