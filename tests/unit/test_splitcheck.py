"""The split-correctness comparison (ladder.splitcheck): identical / diverged-at-near-tie / mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ladder.splitcheck import IDENTICAL, MISMATCH, NEAR_TIE, compare, compare_one, summary

pytestmark = pytest.mark.unit
DATA = Path(__file__).parent / "data" / "splitcheck"


def out(tokens: list[int], tops: list[dict[int, float]], prompt: str = "p") -> dict:
    """An output as Server.greedy records it: each token's logprob is its entry in that position's top-k."""
    lps = [t[tok] for tok, t in zip(tokens, tops, strict=True)]
    return {"prompt": prompt, "text": "", "tokens": tokens, "logprobs": lps,
            "top_logprobs": [sorted(([k, v] for k, v in t.items()), key=lambda x: -x[1]) for t in tops]}


T0 = {5: -1.0, 6: -2.0, 7: -3.0}


def test_identical_sequences():
    ref = out([5, 5], [T0, T0])
    got = out([5, 5], [T0, {5: -1.00001, 6: -2.0}])
    r = compare_one(ref, got, 0.05)
    assert r.verdict == IDENTICAL and r.position is None and r.max_prefix_delta == pytest.approx(1e-5)


def test_near_tie_flip_then_not_compared_further():
    ref = out([5, 8, 1], [T0, {8: -1.0, 9: -1.02}, {1: -0.1}])
    # Position 1: the split picks 9; the picks' logprobs are 0.02 apart in both runs. Position 2 differs
    # wildly, but it continues another prefix and is not compared.
    got = out([5, 9, 4], [T0, {9: -1.005, 8: -1.01}, {4: -0.1}])
    r = compare_one(ref, got, 0.05)
    assert r.verdict == NEAR_TIE and r.position == 1 and (r.reference_token, r.token) == (8, 9)
    assert r.reference_gap == pytest.approx(0.02) and r.gap == pytest.approx(0.005)


@pytest.mark.parametrize(("got_top", "why"), [
    ({9: -1.0, 7: -1.5}, "not in the other run's top-k"),  # the reference's pick is not in the split's top-k
    ({9: -0.5, 8: -1.01}, "more than 0.05"),  # in top-k, but the split prefers 9 by 0.51
])
def test_mismatch(got_top, why):
    ref = out([5, 8], [T0, {8: -1.0, 9: -1.02}])
    got = out([5, 9], [T0, got_top])
    r = compare_one(ref, got, 0.05)
    assert r.verdict == MISMATCH and r.position == 1 and why in r.detail


def test_split_pick_not_in_reference_top_k():
    ref = out([8], [{8: -1.0, 7: -1.01}])
    got = out([9], [{9: -1.0, 8: -1.01}])
    r = compare_one(ref, got, 0.05)
    assert r.verdict == MISMATCH and r.reference_gap is None and r.gap == pytest.approx(0.01)


def test_reference_gap_counts_too():
    ref = out([8], [{8: -0.2, 9: -3.0}])  # single was sure of 8
    got = out([9], [{9: -1.0, 8: -1.01}])
    assert compare_one(ref, got, 0.05).verdict == MISMATCH


def test_missing_reference_or_logprobs_is_a_mismatch():
    got = [out([5], [T0], "a"), out([5], [T0], "b")]
    ref = [{"prompt": "a", "text": "x"}]  # an older outputs.json without logprobs; b absent
    rows = compare(ref, got, 0.05)
    assert [r.verdict for r in rows] == [MISMATCH, MISMATCH]
    assert summary(rows)["counts"] == {IDENTICAL: 0, NEAR_TIE: 0, MISMATCH: 2}


def test_different_lengths_are_a_mismatch():
    assert compare_one(out([5, 5], [T0, T0]), out([5], [T0]), 0.05).verdict == MISMATCH


def captured(name: str) -> list[dict]:
    """Real outputs of the sandbox run of tests/integration/test_families.py: a Llama saved with plain
    transformers (random init, served in bf16), single (PP=1) and multinode (PP=2 across two nodes)."""
    return json.loads((DATA / name).read_text())


def test_captured_pp2_flip_is_a_near_tie():
    single, split = captured("single.json"), captured("multinode.json")
    rows = compare(single, split, 0.05)
    assert summary(rows)["counts"] == {IDENTICAL: 5, NEAR_TIE: 1, MISMATCH: 0}
    [flip] = [r for r in rows if r.verdict == NEAR_TIE]
    # An exact tie in single; one bf16 step apart in the split.
    assert (flip.position, flip.reference_gap, flip.gap) == (12, 0.0, 0.003906)
    assert all(r.max_prefix_delta < 0.05 for r in rows)
    # The texts differ, as byte comparison (the old check) saw.
    assert sum(a["text"] != b["text"] for a, b in zip(single, split, strict=True)) == 1
    # A tolerance below the flip's gap makes it a mismatch: the tolerance is what decides.
    assert summary(compare(single, split, 0.001))["counts"][MISMATCH] == 1


def test_captured_perturbed_stage_two_is_a_mismatch():
    """The same multinode run after the weights of pipeline stage 2's layers were perturbed in place."""
    rows = compare(captured("single.json"), captured("broken.json"), 0.05)
    assert summary(rows)["counts"][MISMATCH] == len(rows) == 6
    assert all(r.position == 0 and "not in the other run's top-k" in r.detail for r in rows)
