"""Snakemake's Slurm executor for the embedded sandbox (`executor: slurm-sandbox`): the real
snakemake-executor-plugin-slurm with one change, its status-check back-off capped.

After every status check that found no job finished the plugin adds 10 s to the wait before
the next one (up to 180 s), whatever `seconds-between-status-checks` says. That spares sacct
on a busy site (profiles/slurm keeps it), but on the sandbox, where squeue asks a local
slurmctld, it noticed a finished stage up to ~40 s late and held a failed run that long
before exiting (bench/orchestration.py measures both). Here the wait never exceeds
`seconds-between-status-checks`. Settings, submission, status and cancellation are the
plugin's own; its options take the prefix `slurm-sandbox-`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
from snakemake_executor_plugin_slurm import ExecutorSettings, common_settings
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo

__all__ = ["Executor", "ExecutorSettings", "common_settings"]


class Executor(SlurmExecutor):
    async def check_active_jobs(self, active_jobs: list[SubmittedJobInfo]) -> AsyncGenerator[SubmittedJobInfo]:
        async for job in super().check_active_jobs(active_jobs):
            yield job
        cap = self.workflow.remote_execution_settings.seconds_between_status_checks
        self.next_seconds_between_status_checks = min(self.next_seconds_between_status_checks, cap)
