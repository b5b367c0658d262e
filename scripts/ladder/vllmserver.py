"""Control of one `vllm serve` process and the requests that prove it works.

The API key travels in the environment (VLLM_API_KEY), never on the command line or
in a log line; the server binds to loopback, where the stage's own clients run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx2  # the openai client's own HTTP layer
import openai

from ladder.logs import shorten, startup_metrics, tail, vllm_memory
from ladder.poll import poll

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
# Top-k candidates recorded per greedy token, for ladder.splitcheck (vLLM allows up to 20).
GREEDY_TOP_K = 5


def prometheus(url: str, names: tuple[str, ...]) -> dict[str, float] | None:
    """The named series of a vLLM server's /metrics, each summed over its labels (None when it does not answer)."""
    try:
        r = httpx2.get(f"{url}/metrics", timeout=3)
    except httpx2.TransportError:
        return None
    if r.status_code != 200:
        return None
    out = dict.fromkeys(names, 0.0)
    for line in r.text.splitlines():
        if (m := re.match(r"(vllm:[a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", line)) and m[1] in out:
            out[m[1]] += float(m[2])
    return out


class ServerError(RuntimeError):
    pass


def attempt(call: Callable[[], Any]) -> tuple[int, Any]:
    """(HTTP status, result) of one client call: (200, result), (the error's status, its message), or
    (0, the reason) when no complete response came (connection lost, broken stream)."""
    try:
        return 200, call()
    except openai.APIStatusError as err:
        return err.status_code, err.message
    except openai.APIError as err:
        return 0, str(err)


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
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            # vLLM 0.32 with torch 2.13 on CPU cannot load its own AOT compile artefacts ("'function' object
            # has no attribute 'finalize_loading'") and compiles again at every start (+15-60 s); the
            # Dynamo path reuses the shared cache.
            "VLLM_USE_AOT_COMPILE": "0"}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def healthy(base: str, timeout: float = 5) -> bool:
    """A vLLM server at base answers /health (no key needed there)."""
    try:
        return httpx2.get(f"{base}/health", timeout=timeout).status_code == 200
    except httpx2.TransportError:
        return False


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

    @cached_property
    def client(self) -> openai.OpenAI:
        # No retries: a check must see the first failure, not a retried success.
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=self.key, max_retries=0, timeout=120)

    def post_raw(self, path: str, key: str | None, body: bytes) -> int:
        """Status of a request the openai client cannot send (no key, or not a valid request)."""
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
        try:
            return httpx2.post(self.base + path, content=body, headers=headers, timeout=30).status_code
        except httpx2.TransportError:
            return 0  # no response, as attempt() reports it

    def _healthy_or_exited(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise ServerError(f"vllm serve exited with {self.proc.returncode} before becoming healthy; "
                              f"last lines of {self.log}:\n{tail(self.log, 25)}")
        return healthy(self.base)

    def wait_healthy(self, timeout: float) -> float:
        """Seconds from start to healthy; ServerError with the log tail if it exits or the deadline passes."""
        if not poll(self._healthy_or_exited, self.started + timeout - time.monotonic(), max_delay=3):
            raise ServerError(f"vllm serve not healthy after {timeout:.0f}s (serve.health_timeout_s); "
                              f"last lines of {self.log}:\n{tail(self.log, 25)}")
        return time.monotonic() - self.started

    def stop(self, grace: float = 30) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        # TERM to the API server alone: it shuts its engine down, which unlinks the engine's /dev/shm
        # queues; TERM to the whole group at once raced that and left them behind (seen after tune).
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        # Engine processes live in the same session: let them finish their own shutdown (it unlinks
        # their /dev/shm segments; a SIGKILL right after the API server exits left them behind), then
        # make sure none is left.
        poll(lambda: not group_alive(self.proc.pid), grace, max_delay=0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def greedy(self, prompts: list[str] = PROMPTS, max_tokens: int = GREEDY_TOKENS) -> list[dict[str, Any]]:
        """Greedy completions with each token's id, logprob and top-k candidates (ladder.splitcheck).

        ignore_eos: every output has exactly max_tokens tokens, so two runs compare position by position.
        """
        out = []
        for p in prompts:
            status, r = attempt(lambda p=p: self.client.completions.create(
                model=self.served_name, prompt=p, max_tokens=max_tokens, temperature=0.0, seed=0,
                logprobs=GREEDY_TOP_K, extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True}))
            if status != 200:
                raise ServerError(f"greedy completion failed ({status}): {str(r)[:300]}")
            choice, ids = r.choices[0], lambda t: int(t.removeprefix("token_id:"))
            lp = choice.logprobs
            out.append({"prompt": p, "text": choice.text, "completion_tokens": r.usage.completion_tokens,
                        "tokens": [ids(t) for t in lp.tokens], "logprobs": lp.token_logprobs,
                        "top_logprobs": [sorted(([ids(t), v] for t, v in top.items()), key=lambda x: -x[1])
                                         for top in lp.top_logprobs]})
        return out


def check_healthy(v: Any, srv: Server, timeout: float, detail: str = "",
                  metric: str = "time_to_healthy_s") -> float | None:
    """The `healthy` check with its real outcome: seconds to healthy (also the verdict's `metric`), else None
    and the diagnosis (exit code or deadline, and the server log's tail) in the verdict."""
    try:
        seconds = srv.wait_healthy(timeout)
    except ServerError as err:
        print(err, file=sys.stderr, flush=True)
        v.check("healthy", False, None, f"< {timeout}", "s", detail=shorten(f"{detail}: {err}" if detail else str(err)))
        return None
    v.check("healthy", True, round(seconds, 1), f"< {timeout}", "s", detail=detail)
    for k, x in (startup_metrics(srv.log) | vllm_memory(srv.log)).items():  # the first healthy start's
        v.metrics.setdefault(k, x)
    v.metrics[metric] = round(seconds, 1)
    return seconds


def smoke(v: Any, srv: Server) -> None:
    """The requests every stage runs first: completion, chat, streaming, and 401 without the key."""
    client, model = srv.client, srv.served_name
    status, r = attempt(lambda: client.completions.create(model=model, prompt="Hello", max_tokens=8))
    v.check("completion", status == 200 and bool(r.choices[0].text), status, 200,
            detail=repr(r.choices[0].text)[:80] if status == 200 else str(r)[:200])
    status, r = attempt(lambda: client.chat.completions.create(
        model=model, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]))
    v.check("chat", status == 200 and r.choices[0].message.content is not None, status, 200,
            detail="" if status == 200 else str(r)[:200])
    status, chunks = attempt(lambda: [c.choices[0].text for c in client.completions.create(
        model=model, prompt="Once", max_tokens=8, stream=True) if c.choices])
    v.check("streaming", status == 200 and len(chunks) >= 2, len(chunks) if status == 200 else status,
            ">= 2 chunks", "chunks")
    # The openai client refuses to send a request without credentials: a bare POST does.
    status = srv.post_raw("/v1/completions", None, json.dumps({"model": model, "prompt": "x"}).encode())
    v.check("no_key_401", status == 401, status, 401)
    status, _ = attempt(lambda: client.with_options(api_key="wrong-" + secrets.token_hex(4)).models.list())
    v.check("wrong_key_401", status == 401, status, 401)


def resolve_model(model: dict[str, Any], cache: Path) -> tuple[str, str]:
    """(path, served name): the tiny model is built (once, cached) on shared storage."""
    if model["name"] == "tiny" and not model.get("path"):
        from ladder import tinymodel

        arch = model.get("architecture", "qwen2")
        out = cache / "models" / (f"tiny-l{model['tiny_layers']}" if arch == "qwen2" else
                                  f"tiny-{arch}-l{model['tiny_layers']}")
        print(tinymodel.build(out, tinymodel.Recipe(layers=model["tiny_layers"], architecture=arch)), flush=True)
        return str(out), "tiny"
    return model["path"], model["name"]


def serve_args(cfg: dict[str, Any], tp: int, pp: int, ray: bool) -> list[str]:
    """The `vllm serve` arguments both stages use; only the parallel layout differs."""
    m, s = cfg["model"], cfg["serve"]
    args = ["--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp),
            "--max-model-len", str(m["max_model_len"]), "--dtype", m["dtype"], "--seed", "0"]
    if m["load_format"] != "auto":
        args += ["--load-format", m["load_format"]]
    if m.get("quantization"):
        args += ["--quantization", m["quantization"]]
    if m.get("kv_cache_dtype", "auto") != "auto":
        args += ["--kv-cache-dtype", m["kv_cache_dtype"]]
    if ray:
        args += ["--distributed-executor-backend", "ray"]
    if s["enforce_eager"]:
        args.append("--enforce-eager")
    return args + list(s["extra_args"])
