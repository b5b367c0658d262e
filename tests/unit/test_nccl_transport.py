"""ladder.collective: which network NCCL really used, from its debug log (lines seen on an H200 x4)."""

from __future__ import annotations

import pytest

from ladder.collective import bus_bandwidth, nccl_transports, transports_in

pytestmark = pytest.mark.unit

# NCCL 2.28.9, sandbox nodes n1/n2 (network namespaces on one host): no IB device, sockets on veth.
INIT = """n1:11002:11002 [0] NCCL INFO NET/Plugin: Could not find: libnccl-net.so
n1:11002:11002 [0] NCCL INFO NET/IB : No device found.
n1:11002:11002 [0] NCCL INFO NET/IB : Using [RO]; OOB eth0:10.77.0.11<0>
n1:11002:11002 [0] NCCL INFO NET/Socket : Using [0]eth0:10.77.0.11<0>
"""
CHANNELS = """n1:11002:11002 [0] NCCL INFO Channel 00/0 : 0[1] -> 1[0] via P2P/CUMEM
n1:11002:11002 [0] NCCL INFO Channel 00/0 : 2[2] -> 0[1] [receive] via NET/Socket/0
n1:11002:11002 [0] NCCL INFO Channel 00/0 : 0[1] -> 2[2] [send] via NET/Socket/0
"""


def test_connections_decide_not_the_ib_probe():
    assert transports_in(INIT + CHANNELS) == {"Socket": 2}


def test_without_connections_the_network_set_up_counts_but_not_an_absent_ib():
    assert transports_in(INIT) == {"Socket": 1}


def test_real_ib_connections():
    text = "NET/IB : Using [0]mlx5_0:1/IB ; OOB ib0\nChannel 00/0 : 2[0] -> 0[0] [receive] via NET/IB/0/GDRDMA\n"
    assert transports_in(text) == {"IB": 1}


def test_logs_are_summed(tmp_path):
    (tmp_path / "nccl.n1.1.log").write_text(INIT + CHANNELS)
    (tmp_path / "nccl.n2.2.log").write_text(CHANNELS)
    (tmp_path / "other.log").write_text("via NET/IB/0")
    assert nccl_transports(tmp_path) == {"Socket": 4}


def test_bus_bandwidth():
    assert bus_bandwidth(256 * 2**20, 0.1, 4) == pytest.approx(256 * 2**20 / 0.1 * 1.5 / 1e9)
