"""Reliability of pixel formats, the exposure filter and the accounting of HDF5/TFRecord faults.

The sources come from :func:`tests.support.faults_pixels.build_pixel_corpus`. Each is read the way
curation reads it (:func:`curation.ingest.iter_episodes` with every frame decoded, or, for the
exposure cases, the job's per-episode pass :func:`curation.episode_samples.process_episode`),
and each case checks

* the pixels of every episode that comes out, exactly (``uint8`` RGB, camera ``high``);
* one ledger line per injected fault, with its reason, file, detail and record/member, and no
  other ledger line;
* ``inputs = outputs + rejected`` for the source.

Each case is one row of RELIABILITY.md (``tests.support.faults.Recorder``; groups ``pixels``,
``exposure``, ``accounting``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from curation.config import get_preset
from curation.episode_samples import process_episode
from curation.ingest import SourceSpec, discover, iter_episodes
from schemas import Episode, Rejection
from tests.support.faults import Fault, Recorder
from tests.support.faults_pixels import Case, build_pixel_corpus

REC = Recorder()


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> list[Case]:
    return build_pixel_corpus(tmp_path_factory.mktemp("pixels"))


def _matches(fault: Fault, rej: Rejection) -> bool:
    return (
        rej.reason in fault.reasons
        and Path(rej.path).resolve() == Path(fault.path).resolve()
        and fault.detail in rej.detail
        and fault.episode in rej.episode
    )


def _expected(case: Case) -> str:
    out = case.inputs - len(case.faults)
    parts = [f"{case.inputs} in = {out} out + {len(case.faults)} ledger"]
    if case.frames:
        parts.append(f"pixels of {len(case.frames)} episode(s) exact")
    parts += [
        f"{'/'.join(f.reasons)} naming {Path(f.path).name}" + (f" {f.episode}" if f.episode else "")
        for f in case.faults
    ]
    return "; ".join(parts)


def _check_source(case: Case) -> tuple[list[str], str]:
    """(problems, observed) of reading ``case.source`` with every frame decoded."""
    items = list(iter_episodes([case.source], decode=True))
    episodes = [i for i in items if isinstance(i, Episode)]
    rejected = [i for i in items if isinstance(i, Rejection)]
    problems = []
    unmatched = list(rejected)
    for fault in case.faults:
        hit = next((r for r in unmatched if _matches(fault, r)), None)
        if hit is None:
            problems.append(f"no ledger line for {fault.name}")
        else:
            unmatched.remove(hit)
    problems += [f"unexpected ledger line {r.reason}: {r.detail}" for r in unmatched]
    if len(episodes) != case.inputs - len(case.faults):
        problems.append(f"{len(episodes)} episodes out, want {case.inputs - len(case.faults)}")
    if len(episodes) + len(rejected) != case.inputs:
        problems.append(f"{len(episodes)} out + {len(rejected)} rejected != {case.inputs} in")
    for i, want in enumerate(case.frames):
        got = episodes[i].cameras["high"].array if i < len(episodes) else None
        if got is None or got.shape != want.shape or not np.array_equal(got, want):
            diff = "missing" if got is None else f"{got.shape} vs {want.shape}"
            if got is not None and got.shape == want.shape:
                diff = f"{int((got != want).sum())} values differ"
            problems.append(f"episode {i}: pixels {diff}")
    observed = f"{len(episodes)} out + {len(rejected)} ledger of {case.inputs} in"
    if case.frames and not any("pixels" in p for p in problems):
        observed += "; pixels exact"
    observed += "".join(
        f"; {r.stage}/{r.reason} {Path(r.path).name} {r.episode}: {r.detail[:110]}" for r in rejected
    )
    return problems, observed


def _run_group(cases: list[Case], group: str) -> None:
    failures = []
    chosen = [c for c in cases if c.group == group]
    assert chosen, f"no {group} cases in the corpus"
    for case in chosen:
        problems, observed = _check_source(case)
        REC.add(group, case.name, case.injected, _expected(case), observed, not problems)
        failures += [f"{case.name}: {p}" for p in problems]
    assert not failures, "\n".join(failures)


def test_pixel_formats_convert_exactly_or_are_ledgered(cases):
    _run_group(cases, "pixels")


def test_tfrecord_and_hdf5_faults_are_counted_one_ledger_line_each(cases):
    _run_group(cases, "accounting")


def test_exposure_filter_rejects_over_and_under_exposed_episodes_in_the_episode_pass(cases):
    (case,) = [c for c in cases if c.group == "exposure"]
    debug = get_preset("debug")
    cfg = replace(debug, filters=replace(debug.filters, min_sharpness=1.0))  # smooth synthetic frames
    refs, unlisted = discover(SourceSpec(case.source))
    assert not unlisted
    records = [process_episode(ref, cfg)[1] for ref in refs]
    failures = []
    passed = [r for r in records if r["stage"] == "passed"]
    ledger = [Rejection.from_row(row) for r in records for row in r["ledger"] if r["stage"] != "passed"]
    for fault in case.faults:
        rec = next((r for r in records if r["label"].endswith(f"#{fault.episode}")), None)
        rej = Rejection.from_row(rec["ledger"][0]) if rec and rec["ledger"] else None
        ok = (
            rej is not None
            and rej.stage == "filter.exposure"
            and rej.reason in fault.reasons
            and Path(rej.path).resolve() == Path(fault.path).resolve()
            and fault.detail in rej.detail
        )
        observed = (
            f"{rej.stage}/{rej.reason}: {rej.detail}" if rej else f"not rejected ({rec and rec['stage']})"
        )
        REC.add(
            "exposure",
            fault.name,
            fault.injected,
            f"filter.exposure/{fault.reasons[0]} + fraction",
            observed,
            ok,
        )
        if not ok:
            failures.append(f"{fault.name}: {observed}")
    balance = len(passed) + len(ledger) == case.inputs and len(passed) == case.inputs - len(case.faults)
    REC.add(
        "exposure",
        "well-exposed episode kept",
        "demo_0: the same synthetic texture, unclipped",
        f"{case.inputs} in = {case.inputs - len(case.faults)} passed + {len(case.faults)} ledger",
        f"{len(passed)} passed + {len(ledger)} ledger of {len(records)}",
        balance,
    )
    assert balance, f"{len(passed)} passed + {len(ledger)} rejected != {case.inputs}"
    assert not failures, "\n".join(failures)
