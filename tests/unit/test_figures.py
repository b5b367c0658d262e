"""Every figure in README.md and gpu/results/*/SUMMARY.md comes from a committed artefact.

README: a measured figure is written as a link to its artefact with the JSON key as the
link title, ``[204.2](gpu/results/h200x2-pp2/single/bench.json "results.c1.output_throughput")``;
the test reads the key and fails when the shown figure differs from it (at the shown
precision) and when a number with a unit stands in the prose without such a link.
GPU summaries: every number must be found, at its shown precision, among the numbers of
that run's committed artefacts (JSON, TSV; not logs or per-request series, which would match
anything); figures read from logs or derived are written by ``gpu/collect.py`` into an
artefact first.
"""

from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)(?:\s+\"([^\"]*)\")?\)")
# A number not part of a version, date, time, identifier, path or option (n1, c16, 0.26.0, 2026-11-28).
NUMBER = re.compile(r"(?<![\w.:/=+-])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w/:]|\.\d|-\d)")
UNIT = re.compile(r"\s?(?:s|ms|min|tok/s|GB/s|MB/s|GiB|MiB|GB|%|x)(?![\w/])")


def prose(text: str) -> str:
    """Text without code blocks, inline code, HTML comments and link targets."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    return LINK.sub(lambda m: m.group(1), text)


def shown(token: str) -> Decimal:
    return Decimal(token.replace(",", ""))


def rounds_to(value: float, figure: Decimal) -> bool:
    exp = figure.as_tuple().exponent
    q = Decimal(1).scaleb(exp) if isinstance(exp, int) else Decimal(1)
    return Decimal(repr(float(value))).quantize(q, rounding=ROUND_HALF_UP) == figure


def lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def readme_links() -> list[tuple[str, str, str]]:
    text = (ROOT / "README.md").read_text()
    return [(m[1], m[2], m[3]) for m in LINK.finditer(text) if NUMBER.fullmatch(m[1].strip())]


def test_readme_figures_equal_their_artefacts():
    links = readme_links()
    assert len(links) >= 10, "README figures are written as links to their artefacts"
    wrong = []
    for figure, target, key in links:
        path = ROOT / target
        assert path.is_file(), f"README figure {figure}: artefact {target} is not committed"
        assert key, f"README figure {figure} links {target} without the JSON key as its title"
        value = lookup(json.loads(path.read_text()), key)
        if not rounds_to(value, shown(figure)):
            wrong.append(f"{figure} != {target}:{key} = {value}")
    assert not wrong, wrong


def test_readme_has_no_figure_without_its_artefact():
    text = prose((ROOT / "README.md").read_text())
    linked = {m[0].strip() for m in readme_links()}
    loose = []
    for m in NUMBER.finditer(text):
        unit = UNIT.match(text, m.end())
        if unit and m.group(0) not in linked:
            loose.append(text[max(0, m.start() - 40):m.end() + 8].replace("\n", " "))
    assert not loose, "figures in README.md without a linked artefact:\n" + "\n".join(loose)


def numbers_in(obj: Any) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in numbers_in(v)] + [x for k in obj for x in numbers_in_text(k)]
    if isinstance(obj, list):
        # Per-request series (raw bench TTFTs, ITLs) would match almost any figure: not a source.
        if len(obj) > 20 and all(isinstance(v, int | float) for v in obj):
            return []
        return [x for v in obj for x in numbers_in(v)]
    if isinstance(obj, str):
        return numbers_in_text(obj)
    return []


def numbers_in_text(text: str) -> list[float]:
    return [float(m.group(0).replace(",", "")) for m in NUMBER.finditer(text)]


@cache
def artefact_numbers(run: Path) -> tuple[float, ...]:
    found: list[float] = []
    for f in sorted(run.rglob("*")):
        if f.suffix == ".json":
            found += numbers_in(json.loads(f.read_text()))
        elif f.suffix in (".jsonl", ".tsv"):  # not logs: their thousands of numbers would match anything
            found += numbers_in_text(f.read_text(errors="replace"))
    return tuple(found)


SUMMARIES = sorted((ROOT / "gpu" / "results").glob("*/SUMMARY.md"))


@pytest.mark.parametrize("summary", SUMMARIES, ids=[p.parent.name for p in SUMMARIES])
def test_gpu_summary_figures_are_in_the_runs_artefacts(summary):
    text = prose(summary.read_text())
    have = artefact_numbers(summary.parent)
    missing = []
    for m in NUMBER.finditer(text):
        figure = shown(m.group(0))
        if not any(rounds_to(v, figure) for v in have):
            missing.append(text[max(0, m.start() - 40):m.end() + 8].replace("\n", " "))
    where = summary.relative_to(ROOT)
    assert not missing, f"figures in {where} found in no artefact of the run:\n" + "\n".join(missing)


@pytest.mark.parametrize(("value", "figure", "ok"), [
    (204.19162, "204.2", True), (204.19162, "204.1", False), (0.7992, "0.80", True), (125.24, "125", True),
    (4.776, "4.78", True), (89.33, "87.1", False), (920192, "920,192", True),
])
def test_rounds_to_the_shown_precision(value, figure, ok):
    assert rounds_to(value, shown(figure)) is ok


def test_numbers_skip_versions_dates_and_names():
    got = [m.group(0) for m in NUMBER.finditer("vLLM 0.26.0 on 2026-11-28 at 14:33:43, n1 c16 PP=2: 204.2 tok/s.")]
    assert got == ["204.2"]


# Independent references (issue 19, item 5): an overlay's reference is a value of an EARLIER committed run,
# named key by key in <judged run>/references.json, and the run it judges shows pass/fail for every one.
PROVENANCE = sorted((ROOT / "gpu" / "results").glob("*/references.json"))
DERIVED = {"(1000 / tpot_ms) / (hbm_gb_s * 1e9 / (weights_gib * 2**30))":
           lambda tpot_ms, hbm_gb_s, weights_gib: (1000 / tpot_ms) / (hbm_gb_s * 1e9 / (weights_gib * 2**30))}


def source_value(spec: dict[str, Any], judged: Path) -> float:
    if "derived" in spec:
        assert spec["derived"] in DERIVED, f"unknown derivation {spec['derived']!r}"
        return DERIVED[spec["derived"]](**{k: source_value(s, judged) for k, s in spec["inputs"].items()})
    path = ROOT / spec["from"]
    assert path.is_file(), f"reference source {spec['from']} is not committed"
    assert judged not in path.parents, f"{spec['from']} is the judged run's own artefact, not an earlier one"
    return lookup(json.loads(path.read_text()), spec["key"])


@pytest.mark.parametrize("prov", PROVENANCE, ids=[p.parent.name for p in PROVENANCE])
def test_gpu_references_come_from_an_earlier_run(prov):
    import yaml

    spec = json.loads(prov.read_text())
    refs = yaml.safe_load((ROOT / spec["overlay"]).read_text())["references"][spec["cluster"]]
    assert set(refs) == set(spec["references"]), "every reference of the overlay names its source, and only those"
    wrong = []
    for metric, (value, *_rest) in refs.items():
        got = source_value(spec["references"][metric], prov.parent)
        if not rounds_to(got, Decimal(str(value))):
            wrong.append(f"{metric}: overlay {value}, source {got}")
    assert not wrong, wrong
