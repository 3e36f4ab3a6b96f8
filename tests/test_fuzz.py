"""Property-based fuzzing of every input boundary: a loader gives a verified result or its documented error.

Each boundary of `fuzz_inputs` (configs, IDX files, image arrays, PNG folders, point and mesh files,
checkpoints, .vqz files) runs a fast slice by default and one 40 times as long under `-m slow`; the
same generators and oracles run 10,000 inputs each, counted, in benchmarks/fuzz_campaign.py.
"""

from __future__ import annotations

import pytest
from fuzz_inputs import ACCEPTED, BOUNDARIES, REJECTED, Boundary, make_fixtures, run_property

FAST_EXAMPLES = {"config": 100, "idx": 120, "arrays": 100, "png": 60, "points": 60, "checkpoint": 60, "vqz": 40, "vqz-lossless": 40}
BUDGETS = [pytest.param(1, id="fast", marks=pytest.mark.timeout(120)),
           pytest.param(40, id="long", marks=[pytest.mark.slow, pytest.mark.timeout(3600)])]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """The tiny trained runs and .vqz file the checks compare with, made once."""
    return make_fixtures(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("factor", BUDGETS)
@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_a_loader_gives_a_verified_result_or_its_documented_error(fixtures, boundary, factor):
    checked, outcomes = BOUNDARIES[boundary], []

    def judged(case, fixtures):  # the boundary's check (it raises on a wrong answer), its verdict kept
        outcomes.append(checked.check(case, fixtures))
        return outcomes[-1]

    run_property(Boundary(checked.inputs, judged), fixtures, max_examples=factor * FAST_EXAMPLES[boundary])
    assert outcomes and all(o == ACCEPTED or o.startswith(REJECTED) for o in outcomes), set(outcomes)
