"""End-to-end suite against a live OpenAI-compatible vLLM service.

Each case is a check in the stage verdict and a row in e2e.json.  Bounded: a fixed
number of requests, each with a timeout, all to the service's loopback address.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from dataclasses import asdict
from functools import partial
from typing import Any

import psutil

from ladder import splitcheck
from ladder.verdict import Verdict
from ladder.vllmserver import Server, attempt, healthy, smoke


def split_check(v: Verdict, greedy: list[dict[str, Any]], reference: list[dict[str, Any]] | None,
                tolerance: float) -> dict[str, Any] | None:
    """The split-correctness check (ladder.splitcheck): fails only on a mismatch."""
    if reference is None:
        v.check("outputs_match_single", None, detail="no single-node outputs to compare")
        return None
    if not all(splitcheck.has_logprobs(o) for o in reference):
        v.check("outputs_match_single", False, None, "single outputs with logprobs",
                detail="results/single/outputs.json has no per-token logprobs (written by an older ladder): "
                       "re-run single (--forcerun single)")
        return None
    result = splitcheck.summary(splitcheck.compare(reference, greedy, tolerance))
    counts = result["counts"]
    rows = "; ".join(f"{p['prompt']!r}: {p['verdict']}" + (f" ({p['detail']})" if p["detail"] else "")
                     for p in result["prompts"] if p["verdict"] != splitcheck.IDENTICAL)
    v.check("outputs_match_single", counts[splitcheck.MISMATCH] == 0, counts, f"no {splitcheck.MISMATCH}",
            "prompts", detail=rows or "greedy tokens identical to the single stage's for every prompt")
    return result


def run_suite(v: Verdict, srv: Server, reference_outputs: list[dict[str, Any]] | None,
              tolerance: float, clients: int = 16) -> dict[str, Any]:
    t0 = time.monotonic()
    first = len(v.checks)
    client, model = srv.client, srv.served_name
    status, r = attempt(client.models.list)
    names = [m.id for m in r] if status == 200 else []
    v.check("models_list", model in names, names, [model])
    smoke(v, srv)

    # max_tokens is honoured exactly (ignore_eos so the model cannot stop early).
    status, r = attempt(lambda: client.completions.create(model=model, prompt="The", max_tokens=7, temperature=0,
                                                          extra_body={"ignore_eos": True}))
    got = r.usage.completion_tokens if status == 200 else None
    v.check("max_tokens", got == 7 and r.choices[0].finish_reason == "length", got, 7, "tokens")

    # A stop string ends generation and is not returned.
    prompt = "The GNU General Public License is"
    status, r = attempt(lambda: client.completions.create(model=model, prompt=prompt, max_tokens=32, temperature=0))
    text = r.choices[0].text if status == 200 else ""
    stop = text[3:6] if len(text) >= 6 else None
    if stop and stop.strip():
        status, r = attempt(lambda: client.completions.create(model=model, prompt=prompt, max_tokens=32,
                                                              temperature=0, stop=[stop]))
        choice = r.choices[0] if status == 200 else None
        v.check("stop_string", bool(choice and choice.finish_reason == "stop" and stop not in choice.text),
                choice and choice.text, f"text before {stop!r}",
                detail=f"finish_reason={choice.finish_reason}" if choice else f"status {status}: {r}"[:200])
    else:
        v.check("stop_string", None, text, detail="greedy text too short or blank to pick a stop string")

    # Many concurrent clients: all succeed.
    patient = client.with_options(timeout=300)

    def one(i: int) -> int:
        return attempt(lambda: patient.completions.create(model=model, prompt=f"Request {i}:", max_tokens=16))[0]

    with cf.ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(one, range(clients * 2)))
    ok = sum(s == 200 for s in statuses)
    v.check("concurrent_clients", ok == len(statuses), ok, len(statuses), "requests",
            detail=f"{clients} clients; statuses {sorted(set(statuses))}")

    # Malformed requests get a 4xx and the server stays up (the first two cannot be sent by the client).
    def create(**request: Any) -> int:
        return attempt(lambda: client.completions.create(**request))[0]

    url = "/v1/completions"
    bad = {
        "invalid_json": srv.post_raw(url, srv.key, b"{not json"),
        "missing_prompt": srv.post_raw(url, srv.key, json.dumps({"model": model, "max_tokens": 4}).encode()),
        "negative_max_tokens": create(model=model, prompt="x", max_tokens=-1),
        "unknown_model": create(model="no-such-model", prompt="x", max_tokens=1),
        "prompt_too_long": create(model=model, prompt="word " * 5000, max_tokens=1),
    }
    for name, status in bad.items():
        v.check(f"malformed:{name}", 400 <= status < 500, status, "4xx")
    alive = healthy(srv.base)
    v.check("alive_after_malformed", alive, alive, True)

    greedy = srv.greedy()
    split = split_check(v, greedy, reference_outputs, tolerance)
    # The suite's own cases only, not the checks the stage recorded before it.
    return {"duration_s": round(time.monotonic() - t0, 1), "greedy": greedy, "split_check": split,
            "cases": [asdict(c) for c in v.checks[first:]]}


def rss_mib(srv: Server) -> float:
    """Resident memory of the server and every process it started."""
    try:
        root = psutil.Process(srv.proc.pid) if srv.proc else None
        procs = [root, *root.children(recursive=True)] if root else []
        return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20
    except psutil.Error:
        return 0.0


def soak(v: Verdict, srv: Server, seconds: float, clients: int) -> dict[str, Any]:
    """Bounded concurrent load for `seconds`: no failed request, server memory steady."""
    stop = time.monotonic() + seconds

    def client(i: int) -> list[tuple[bool, float]]:
        done: list[tuple[bool, float]] = []
        while time.monotonic() < stop:
            t0 = time.monotonic()
            status, _ = attempt(partial(srv.client.completions.create, model=srv.served_name,
                                        prompt=f"Soak {i}.{len(done)}:", max_tokens=16))
            done.append((status == 200, time.monotonic() - t0))
            if status == 0:  # no response: the server is gone; do not spin
                time.sleep(1)
        return done

    memory = []
    with cf.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, i) for i in range(clients)]
        running: set[cf.Future[list[tuple[bool, float]]]] = set(futures)
        while running:  # the server's memory, sampled until every client is done
            memory.append(round(rss_mib(srv), 1))
            running = cf.wait(running, timeout=min(5.0, max(seconds / 20, 0.5))).not_done
    requests = [r for f in futures for r in f.result()]
    failed = sum(not ok for ok, _ in requests)
    latencies = sorted(t for _, t in requests)
    v.check("soak_no_failed_requests", failed == 0 and bool(requests), failed, 0, "failed",
            detail=f"{len(requests)} requests from {clients} clients in {seconds:.0f}s")
    # Steady: after the first quarter (warm-up), memory grows by less than 10 %.
    settled = memory[len(memory) // 4:]
    growth = (settled[-1] - settled[0]) / settled[0] if settled[0] else 0.0
    v.check("soak_memory_steady", growth < 0.10, round(growth * 100, 1), "< 10", "% growth",
            detail=f"server RSS {settled[0]:.0f} -> {settled[-1]:.0f} MiB")
    return {"seconds": seconds, "clients": clients, "ok": len(requests) - failed, "failed": failed,
            "latency_s": {"p50": latencies[len(latencies) // 2] if latencies else None,
                          "p99": latencies[int(len(latencies) * 0.99)] if latencies else None},
            "server_rss_mib": memory}
