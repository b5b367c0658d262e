"""ladder.vllmserver: the health wait records its real outcome (real processes stand in for vllm serve)."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass

import pytest

from ladder.verdict import Verdict
from ladder.vllmserver import Server, check_healthy

pytestmark = pytest.mark.unit

HEALTH_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@dataclass
class Scripted(Server):
    """A Server whose process is a short Python script instead of `vllm serve`."""

    script: str = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script, str(self.port)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp_path, script: str, timeout: float) -> tuple[Verdict, float | None, Scripted]:
    srv = Scripted("m", "m", free_port(), "k", tmp_path / "serve.log", script=script)
    v = Verdict("t")
    srv.start()
    try:
        return v, check_healthy(v, srv, timeout, "attempt 1"), srv
    finally:
        srv.stop(grace=5)


def test_healthy_records_the_seconds(tmp_path):
    v, seconds, _ = run(tmp_path, HEALTH_SERVER, timeout=60)
    assert seconds is not None and v.checks[-1].ok is True and v.checks[-1].value == round(seconds, 1)


def test_server_that_exits_fails_healthy_with_the_log_tail(tmp_path):
    v, seconds, srv = run(tmp_path, "print('bad --max-model-len'); raise SystemExit(3)", timeout=60)
    c = v.checks[-1]
    assert seconds is None and (c.name, c.ok) == ("healthy", False)
    assert "exited with 3" in c.detail and "bad --max-model-len" in c.detail and str(srv.log) in c.detail
    assert c.detail.startswith("attempt 1: ")


def test_server_never_healthy_fails_at_the_deadline_and_stops(tmp_path):
    v, seconds, srv = run(tmp_path, "import time; time.sleep(120)", timeout=2)
    c = v.checks[-1]
    assert seconds is None and (c.name, c.ok) == ("healthy", False)
    assert "not healthy after 2s" in c.detail and "last lines of" in c.detail
    assert srv.proc is not None and srv.proc.poll() is not None  # stopped, not left running
