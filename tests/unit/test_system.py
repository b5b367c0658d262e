"""The one list of Debian packages (ladder.system) that make demo / make test install."""

import pytest

from ladder import system
from ladder.system import COMMANDS, PACKAGES, ensure, installed

pytestmark = pytest.mark.unit


def test_groups_name_what_the_tests_and_sandbox_use():
    assert {"slurm-wlm", "munge"} <= set(PACKAGES["sandbox"])
    assert {"chromium", "nftables"} <= set(PACKAGES["test"])


def test_installed_tells_present_from_absent():
    assert installed("dpkg") is True
    assert installed("no-such-package-ladder") is False


def test_ensure_installs_nothing_when_present(monkeypatch):
    monkeypatch.setitem(PACKAGES, "probe", ["dpkg"])
    assert ensure("probe") == []


def test_a_package_unpacked_without_dpkg_counts_by_its_command(monkeypatch, tmp_path):
    assert set(COMMANDS) == {p for g in PACKAGES.values() for p in g}
    (tmp_path / "nft").write_text("#!/bin/sh\n")
    (tmp_path / "nft").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(system.subprocess, "run", lambda *a, **k: pytest.fail("dpkg asked"))
    assert installed("nftables") is True

