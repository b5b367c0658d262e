"""Control of one `vllm serve` process and the requests that prove it works.

The API key travels in the environment (VLLM_API_KEY), never on the command line or
in a log line; the server binds to loopback, where the stage's own clients run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ladder.logs import tail

# Fixed prompt set whose greedy completions single and multinode must agree on.
PROMPTS = [
    "The GNU General Public License is",
    "def fibonacci(n):",
    "Permission is hereby granted, free of charge,",
    "import os\nimport sys\n",
    "THE SOFTWARE IS PROVIDED",
    "Copyright (C) 2007 Free Software Foundation",
]
GREEDY_TOKENS = 16


class ServerError(RuntimeError):
    pass


def last_run(log: Path) -> list[str]:
    """Lines of the latest server start in an appended log (each start writes a `$ cmd` line)."""
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("$ ")]
    return lines[starts[-1]:] if starts else lines


def api_key(env_var: str, key_file: str | None) -> str:
    """The key from a file, then the environment, else a fresh random one for this run."""
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise ServerError(f"serve.api_key_file: {path} does not exist")
        key = path.read_text().strip()
        if not key:
            raise ServerError(f"serve.api_key_file: {path} is empty")
        return key
    return os.environ.get(env_var) or secrets.token_urlsafe(24)


def cpu_env(cache: Path) -> dict[str, str]:
    """Environment for vLLM on CPU with shared compile caches (DESIGN.md §7)."""
    return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "VLLM_CACHE_ROOT": str(cache / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "HF_HOME": str(cache / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


@dataclass
class Server:
    model_path: str
    served_name: str
    port: int
    key: str
    log: Path
    args: list[str] = field(default_factory=list)  # tp/pp/backend/dtype/... as argv items
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "ladder.vllm_cli", "serve", self.model_path,
                "--served-model-name", self.served_name, "--host", self.host, "--port", str(self.port),
                "--disable-uvicorn-access-log", *self.args]

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **self.env, VLLM_API_KEY=self.key)
        with open(self.log, "ab") as fh:
            fh.write(f"$ {' '.join(self.command())}\n".encode())
            fh.flush()
            self.started = time.monotonic()
            self.proc = subprocess.Popen(self.command(), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def wait_healthy(self, timeout: float) -> float:
        deadline = self.started + timeout
        delay = 0.5
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise ServerError(f"vllm serve exited with {self.proc.returncode} before becoming healthy; "
                                  f"last lines of {self.log}:\n{tail(self.log, 25)}")
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=5) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(delay)
            delay = min(delay * 1.3, 3.0)
        raise ServerError(f"vllm serve not healthy after {timeout:.0f}s (serve.health_timeout_s); "
                          f"last lines of {self.log}:\n{tail(self.log, 25)}")

    def stop(self, grace: float = 30) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        # Engine processes live in the same session; make sure none is left.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ requests
    def request(self, path: str, body: dict[str, Any] | None = None, key: str | None = "default",
                timeout: float = 120, raw: bytes | None = None) -> tuple[int, Any]:
        """POST (body/raw) or GET; returns (status, parsed JSON or text). Never raises on HTTP errors."""
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {self.key if key == 'default' else key}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read().decode()
                status = r.status
        except urllib.error.HTTPError as err:
            text, status = err.read().decode(errors="replace"), err.code
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def stream(self, path: str, body: dict[str, Any], timeout: float = 120) -> tuple[int, list[str]]:
        """A streaming request; returns (status, the data chunks' text deltas)."""
        req = urllib.request.Request(self.base + path, data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self.key}"})
        chunks = []
        with urllib.request.urlopen(req, timeout=timeout) as r:
            for line in r:
                line = line.decode().strip()
                if line.startswith("data: ") and line != "data: [DONE]":
                    choice = json.loads(line[6:])["choices"][0]
                    chunks.append(choice.get("text") or choice.get("delta", {}).get("content") or "")
            return r.status, chunks

    def greedy(self, prompts: list[str] = PROMPTS, max_tokens: int = GREEDY_TOKENS) -> list[dict[str, Any]]:
        out = []
        for p in prompts:
            status, body = self.request("/v1/completions", {"model": self.served_name, "prompt": p,
                                                            "max_tokens": max_tokens, "temperature": 0.0,
                                                            "seed": 0})
            if status != 200:
                raise ServerError(f"greedy completion failed ({status}): {str(body)[:300]}")
            out.append({"prompt": p, "text": body["choices"][0]["text"],
                        "completion_tokens": body["usage"]["completion_tokens"]})
        return out


def smoke(v: Any, srv: Server) -> None:
    """The requests every stage runs first: completion, chat, streaming, and 401 without the key."""
    model = srv.served_name
    status, body = srv.request("/v1/completions", {"model": model, "prompt": "Hello", "max_tokens": 8})
    v.check("completion", status == 200 and bool(body["choices"][0]["text"]), status, 200,
            detail=repr(body["choices"][0]["text"])[:80] if status == 200 else str(body)[:200])
    status, body = srv.request("/v1/chat/completions", {"model": model, "max_tokens": 8,
                                                        "messages": [{"role": "user", "content": "Hi"}]})
    v.check("chat", status == 200 and "content" in body["choices"][0]["message"], status, 200,
            detail="" if status == 200 else str(body)[:200])
    status, chunks = srv.stream("/v1/completions", {"model": model, "prompt": "Once", "max_tokens": 8})
    v.check("streaming", status == 200 and len(chunks) >= 2, len(chunks), ">= 2 chunks", "chunks")
    status, _ = srv.request("/v1/completions", {"model": model, "prompt": "x", "max_tokens": 1}, key=None)
    v.check("no_key_401", status == 401, status, 401)
    status, _ = srv.request("/v1/models", key="wrong-" + secrets.token_hex(4))
    v.check("wrong_key_401", status == 401, status, 401)


def resolve_model(model: dict[str, Any], cache: Path) -> tuple[str, str]:
    """(path, served name): the tiny model is built (once, cached) on shared storage."""
    if model["name"] == "tiny" and not model.get("path"):
        from ladder import tinymodel

        out = cache / "models" / f"tiny-l{model['tiny_layers']}"
        if tinymodel.main(["--out", str(out), "--layers", str(model["tiny_layers"])]) != 0:
            raise ServerError(f"building the tiny model in {out} failed")
        return str(out), "tiny"
    return model["path"], model["name"]


def serve_args(cfg: dict[str, Any], tp: int, pp: int, ray: bool) -> list[str]:
    """The `vllm serve` arguments both stages use; only the parallel layout differs."""
    m, s = cfg["model"], cfg["serve"]
    args = ["--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp),
            "--max-model-len", str(m["max_model_len"]), "--dtype", m["dtype"], "--seed", "0"]
    if m["load_format"] != "auto":
        args += ["--load-format", m["load_format"]]
    if ray:
        args += ["--distributed-executor-backend", "ray"]
    if s["enforce_eager"]:
        args.append("--enforce-eager")
    return args + list(s["extra_args"])
