"""Node-list expansion (Slurm's own, through scontrol) and per-job port blocks (ladder.slurm)."""

from __future__ import annotations

import pytest

from ladder.slurm import PORTS_PER_JOB, expand_nodelist, job_ports

pytestmark = pytest.mark.unit


@pytest.fixture
def slurm_conf(tmp_path, monkeypatch):
    """scontrol expands host lists offline, but only with a slurm.conf to read."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=unit\nSlurmctldHost=localhost\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))


@pytest.mark.parametrize(("spec", "hosts"), [
    ("n1", ["n1"]),
    ("n[1-3,7]", ["n1", "n2", "n3", "n7"]),
    ("n[1,3-4],gpu-a", ["n1", "n3", "n4", "gpu-a"]),
    ("gpu-[08-11]", ["gpu-08", "gpu-09", "gpu-10", "gpu-11"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("  n[5]  ", ["n5"]),
    ("", []),
])
def test_expand_nodelist(slurm_conf, spec, hosts):
    assert expand_nodelist(spec) == hosts


@pytest.mark.parametrize("spec", ["n[3-1]", "n[a-b]"])
def test_expand_nodelist_errors(slurm_conf, spec):
    with pytest.raises(ValueError, match="cannot expand"):
        expand_nodelist(spec)


def named(ports: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in ports.items() if k not in ("min_worker", "max_worker")}


@pytest.mark.parametrize("jid", [1, 2, 499, 500, 12345, 10**7 + 3])
def test_job_ports_inside_range_and_distinct(jid):
    base, span = 20000, 20000
    p = job_ports(jid, base, span)
    assert all(base <= v < base + span for v in p.values())
    assert len(set(named(p).values())) == len(named(p))
    # Ray's worker range is inside the job's block and clear of the named ports.
    start = min(p.values())
    assert p["min_worker"] <= p["max_worker"] < start + PORTS_PER_JOB
    assert max(named(p).values()) < p["min_worker"]


def test_consecutive_jobs_get_disjoint_blocks():
    base, span = 30000, 8000
    blocks = span // PORTS_PER_JOB
    seen: set[int] = set()
    for jid in range(100, 100 + blocks):
        p = job_ports(jid, base, span)
        block = set(range(min(p.values()), p["max_worker"] + 1))
        assert not block & seen, f"job {jid} overlaps an earlier job"
        seen |= block
    # ... until the range wraps: the same block comes back `blocks` jobs later.
    assert job_ports(100, base, span) == job_ports(100 + blocks, base, span)


def test_job_ports_smallest_range():
    p = job_ports(7, 40000, 5 * PORTS_PER_JOB)
    assert all(40000 <= v < 40000 + 5 * PORTS_PER_JOB for v in p.values())


@pytest.mark.parametrize(("base", "span", "why"), [
    (20000, 5 * PORTS_PER_JOB - 1, "too small"),
    (20000, 10, "too small"),
    (60000, 6000, "exceeds 65535"),
])
def test_job_ports_bad_range(base, span, why):
    with pytest.raises(ValueError, match=why):
        job_ports(1, base, span)


def test_gres_typed_or_not():
    from ladder.slurm import gres

    assert gres({"gpu_type": "h200", "gpus_per_node": 4}) == "gpu:h200:4"
    assert gres({"gpu_type": None, "gpus_per_node": 2}) == "gpu:2"


def test_port_free_ignores_time_wait_but_not_a_listener():
    import socket

    from ladder.multistage import port_free

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    assert not port_free("127.0.0.1", port)  # a server is on it
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()  # the server side closes first: its end stays in TIME_WAIT
    client.close()
    srv.close()
    # The stage before, in the same allocation, served here: vLLM binds with SO_REUSEADDR and so can we.
    assert port_free("127.0.0.1", port)
