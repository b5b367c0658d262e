"""Does a split (TP/PP) model compute what the single-node model computes? Pure logic.

Byte equality of greedy text is the wrong test: with random or real weights two tokens can
be nearly tied, and the different summation order of a split legitimately flips the pick.
Each greedy output therefore carries, per generated token, its id, its logprob and the
top-k candidates with their logprobs (ladder.vllmserver.Server.greedy). Two runs agree on a
prompt when the token sequences are identical, or when at the first position where they
differ each side's token is among the other side's top-k and, on both sides, the two tokens'
logprobs are within `tolerance` of each other: a near-tie. The sequences are not compared
after that point (they continue from different prefixes). Anything else is a mismatch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

IDENTICAL = "identical"
NEAR_TIE = "diverged-at-near-tie"
MISMATCH = "mismatch"


@dataclass(frozen=True)
class PromptResult:
    prompt: str
    verdict: str  # IDENTICAL, NEAR_TIE or MISMATCH
    position: int | None = None  # first differing token position
    reference_token: int | None = None
    token: int | None = None
    # Logprob of this side's pick minus that of the other side's pick, in each run (None: not in top-k).
    reference_gap: float | None = None
    gap: float | None = None
    # Largest |logprob difference| over the identical prefix: how close the two computations are.
    max_prefix_delta: float = 0.0
    detail: str = ""


def has_logprobs(output: dict[str, Any]) -> bool:
    return all(k in output for k in ("tokens", "logprobs", "top_logprobs"))


def _top(output: dict[str, Any], i: int) -> dict[int, float]:
    return {int(t): float(lp) for t, lp in output["top_logprobs"][i]}


def compare_one(reference: dict[str, Any], got: dict[str, Any], tolerance: float) -> PromptResult:
    """Classify one prompt's output against the reference (single-node) output."""
    ref_tokens, tokens = list(reference["tokens"]), list(got["tokens"])
    prompt = str(got["prompt"])
    common = min(len(ref_tokens), len(tokens))
    pos = next((i for i in range(common) if ref_tokens[i] != tokens[i]), None)
    delta = max((abs(reference["logprobs"][i] - got["logprobs"][i]) for i in range(pos if pos is not None
                                                                                     else common)), default=0.0)
    delta = round(delta, 6)
    if pos is None:
        if len(ref_tokens) == len(tokens):
            return PromptResult(prompt, IDENTICAL, max_prefix_delta=delta)
        return PromptResult(prompt, MISMATCH, position=common, max_prefix_delta=delta,
                            detail=f"{len(tokens)} tokens, reference has {len(ref_tokens)}")
    a, b = ref_tokens[pos], tokens[pos]
    ref_top, top = _top(reference, pos), _top(got, pos)
    # Each side's own pick is in its own top-k (vLLM always returns the sampled token).
    ref_gap = round(ref_top[a] - ref_top[b], 6) if b in ref_top and a in ref_top else None
    gap = round(top[b] - top[a], 6) if a in top and b in top else None
    near = ref_gap is not None and gap is not None and abs(ref_gap) <= tolerance and abs(gap) <= tolerance
    if ref_gap is None or gap is None:
        why = "not in the other run's top-k"
    elif near:
        why = f"logprob gaps {ref_gap:g} (reference) and {gap:g} within {tolerance:g}"
    else:
        why = f"logprob gaps {ref_gap:g} (reference) and {gap:g}: more than {tolerance:g}"
    return PromptResult(prompt, NEAR_TIE if near else MISMATCH, pos, a, b, ref_gap, gap, delta,
                        f"token {pos}: {b} vs reference {a}, {why}")


def compare(reference: list[dict[str, Any]], got: list[dict[str, Any]], tolerance: float) -> list[PromptResult]:
    """One result per prompt of `got`; a prompt the reference lacks, or without logprobs, is a mismatch."""
    by_prompt = {o["prompt"]: o for o in reference}
    results = []
    for o in got:
        ref = by_prompt.get(o["prompt"])
        if ref is None or not has_logprobs(ref) or not has_logprobs(o):
            why = "no reference output" if ref is None else "no per-token logprobs recorded"
            results.append(PromptResult(str(o["prompt"]), MISMATCH, detail=why))
        else:
            results.append(compare_one(ref, o, tolerance))
    return results


def summary(results: list[PromptResult]) -> dict[str, Any]:
    """Counts per verdict and the per-prompt rows (for the stage verdict and e2e.json)."""
    counts = {k: sum(r.verdict == k for r in results) for k in (IDENTICAL, NEAR_TIE, MISMATCH)}
    return {"counts": counts, "prompts": [asdict(r) for r in results]}
