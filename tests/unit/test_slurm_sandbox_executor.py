"""ladder's executors: the pending-job watch (slurm-ladder) and the sandbox's status-check back-off capped at
seconds-between-status-checks (slurm-sandbox)."""

import asyncio
from types import SimpleNamespace

import pytest
import snakemake_executor_plugin_slurm as slurm
from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

import snakemake_executor_plugin_slurm_ladder as ladder
import snakemake_executor_plugin_slurm_sandbox as sandbox

pytestmark = pytest.mark.unit


def checks(executor, rounds: int) -> list[float]:
    """The wait before each next status check, over `rounds` checks that found no job finished."""
    async def drain():
        return [j async for j in executor.check_active_jobs(["job"])]

    waits = []
    for _ in range(rounds):
        assert asyncio.run(drain()) == ["job"]  # still running: handed back to the wait loop
        waits.append(executor.next_seconds_between_status_checks)
    return waits


@pytest.fixture
def backing_off(monkeypatch):
    """The plugin's check, reduced to what it does when no job finished: yield it, add 10 s to the wait."""
    async def check(self, active_jobs):
        for job in active_jobs:
            yield job
        self.next_seconds_between_status_checks = min(self.next_seconds_between_status_checks + 10, 180)

    monkeypatch.setattr(slurm.Executor, "check_active_jobs", check)
    monkeypatch.setattr(ladder, "pending_reasons", lambda name: {})  # nothing pending

    def make(cls):
        ex = cls.__new__(cls)
        ex.workflow = SimpleNamespace(remote_execution_settings=SimpleNamespace(seconds_between_status_checks=2),
                                      config={})
        ex.run_uuid = "run"
        ex._next_seconds_between_status_checks = None
        return ex

    return make


def test_plugin_backs_off_the_sandbox_executor_does_not(backing_off):
    assert checks(backing_off(slurm.Executor), 4) == [12, 22, 32, 42]
    assert checks(backing_off(sandbox.Executor), 4) == [2, 2, 2, 2]


def test_registered_as_slurm_sandbox_with_the_plugins_settings():
    plugin = ExecutorPluginRegistry().get_plugin("slurm-sandbox")
    assert plugin.executor is sandbox.Executor and issubclass(plugin.executor, slurm.Executor)
    assert plugin._executor_settings_cls is slurm.ExecutorSettings


@pytest.mark.parametrize(("reason", "waited_s", "expected"), [
    ("PartitionNodeLimit", 0, "can never start: PartitionNodeLimit"),
    ("QOSMaxWallDurationPerJobLimit", 0, "can never start: QOSMaxWallDurationPerJobLimit"),
    ("ReqNodeNotAvail, UnavailableNodes:n3", 59, None),
    ("ReqNodeNotAvail, UnavailableNodes:n3", 60, "waited 1.0 min (faults.pending_patience_min) for unavailable "
                                                  "nodes: ReqNodeNotAvail, UnavailableNodes:n3"),
    ("Resources", 10**6, None),
    ("Priority", 10**6, None),
])
def test_pending_reasons_that_cancel(reason, waited_s, expected):
    assert ladder.verdict(reason, waited_s, patience_s=60) == expected


def test_slurm_ladder_registered_and_the_sandbox_builds_on_it():
    plugin = ExecutorPluginRegistry().get_plugin("slurm-ladder")
    assert plugin.executor is ladder.Executor and issubclass(sandbox.Executor, ladder.Executor)
