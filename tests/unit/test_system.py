"""The one list of Debian packages (ladder.system) that make demo / make test install."""

import pytest

from ladder.system import PACKAGES, ensure, installed

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
