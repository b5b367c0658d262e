"""Each sandbox node has a /tmp of its own, as separate hosts do: a job step's file there is seen by
later steps on that node, not by another node nor by the controller's host, and /tmp is a
host's (sticky, world-writable), so jobs of any user can use it."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

pytestmark = pytest.mark.sandbox


def on(sandbox, node: str, script: str) -> str:
    return sandbox.slurm("srun", "-w", node, "-N", "1", "-n", "1", "-t", "1", "sh", "-c", script).strip()


def test_a_file_in_tmp_stays_on_its_node(sandbox) -> None:
    name = f"/tmp/ladder-node-tmp-{secrets.token_hex(6)}"
    host_file = Path(f"{name}-host")
    host_file.write_text("host\n")
    try:
        # A user's job (nobody here) may write there too.
        assert on(sandbox, "n1", f"stat -c %a /tmp && echo n1 > {name} && cat {name} && setpriv --reuid=65534 "
                  f"--regid=65534 --clear-groups sh -c 'echo nobody > {name}-nobody' && cat {name}-nobody"
                  ).split() == ["1777", "n1", "nobody"]
        assert on(sandbox, "n1", f"cat {name}") == "n1"  # still there for the node's next job
        assert on(sandbox, "n2", f"test -e {name} && echo seen || echo absent") == "absent"
        assert not Path(name).exists(), "a node's /tmp file appeared in the host's /tmp"
        assert on(sandbox, "n1", f"test -e {host_file} && echo seen || echo absent") == "absent"
    finally:
        host_file.unlink(missing_ok=True)
        on(sandbox, "n1", f"rm -f {name} {name}-nobody")
