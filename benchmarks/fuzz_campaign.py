"""Fuzz campaign: 10,000 generated inputs per input boundary through vaekit's loaders, counted.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fuzz_campaign.py                 # every boundary
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fuzz_campaign.py --boundary vqz  # one of them

The inputs and oracles are those of tests/fuzz_inputs.py, which tests/test_fuzz.py runs as a fast
slice: configs, IDX files, image arrays (.npy/.npz), PNG folders, point and mesh files,
checkpoints (state.json and model.safetensors edits, forged or not) and .vqz files, lossy and lossless. vaekit is
imported once and the fixture runs trained once per process; hypothesis generates the inputs (no
shrinking, no database) and every input is judged and counted, none stops the campaign:
- accepted: a result the oracle verified; rejected: the loader's documented error, with a message;
- tracebacks: any other exception; hangs: an input still running after --timeout seconds (SIGALRM);
- silent acceptances: an input the oracle says must be refused (out of a documented range, damage
  its checksums should catch, NaN weights, an empty split) was accepted; wrong results: accepted
  with another shape or other values than the input declares.
Each failure kind keeps its first examples (input, message, traceback tail). Peak RSS is the
process's high-water mark (ru_maxrss) after the boundary, against --rss-bound-gib (run one boundary
per process to see each one's own peak). benchmarks/results/fuzz_campaign.json is rewritten
atomically after every boundary; a boundary already there with as many inputs is skipped (unless --again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))

import hypothesis
import torch
from fuzz_inputs import (
    ACCEPTED,
    BOUNDARIES,
    REJECTED,
    Boundary,
    Fixtures,
    OracleViolation,
    make_fixtures,
    run_property,
)

import vaekit
from vaekit.io import atomic_write_json

OUT = ROOT / "results" / "fuzz_campaign.json"
EXAMPLES_KEPT = 3  # per failure kind and exception type


class Hang(BaseException):
    """Raised by SIGALRM in an input that ran past the per-input limit (not an Exception: no loader catches it)."""


def _alarm(signum: int, frame: object) -> None:
    raise Hang


def campaign(boundary: Boundary, fixtures: Fixtures, *, inputs: int, timeout: int) -> dict[str, Any]:
    """Counts of `inputs` generated inputs of `boundary`, and the first examples of each kind of failure."""
    counts = dict.fromkeys(["inputs_tried", "accepted", "rejected", "tracebacks", "hangs", "silent_acceptances",
                            "wrong_results"], 0)
    refusals: dict[str, int] = {}
    examples: dict[str, list[dict[str, str]]] = {}

    def judge(case: Any) -> None:
        counts["inputs_tried"] += 1
        signal.alarm(timeout)
        try:
            outcome = boundary.check(case, fixtures)
        except Hang:
            kind, error = "hangs", None
        except OracleViolation as violation:
            kind, error = "silent_acceptances" if "silent acceptance" in str(violation) else "wrong_results", violation
        except Exception as exception:  # noqa: BLE001 - every other exception is counted as a bug
            kind, error = "tracebacks", exception
        else:
            counts[ACCEPTED if outcome == ACCEPTED else REJECTED] += 1
            if outcome != ACCEPTED:
                refusals[outcome] = refusals.get(outcome, 0) + 1
            return
        finally:
            signal.alarm(0)
        counts[kind] += 1
        key = kind if error is None else f"{kind}: {type(error).__name__}"
        if len(examples.setdefault(key, [])) < EXAMPLES_KEPT:
            examples[key].append({"input": repr(case)[:600], "error": str(error)[:600],
                                  "traceback": "".join(traceback.format_exception(error)[-4:])[-1500:] if error else ""})

    signal.signal(signal.SIGALRM, _alarm)
    start = time.perf_counter()
    run_property(boundary, fixtures, max_examples=inputs, test=judge)
    return counts | {"refusals": refusals, "seconds": round(time.perf_counter() - start, 1), "failure_examples": examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boundary", action="append", choices=list(BOUNDARIES), help="default: every boundary")
    parser.add_argument("--inputs", type=int, default=10_000, help="generated inputs per boundary")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it counts as a hang")
    parser.add_argument("--rss-bound-gib", type=float, default=2.0, help="the most peak RSS the process may reach")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--again", action="store_true", help="run the boundaries again even if the results hold them")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["setup"] = {"inputs_per_boundary": args.inputs, "timeout_seconds": args.timeout,
                        "rss_bound_mib": round(args.rss_bound_gib * 1024), "vaekit": vaekit.__version__,
                        "torch": torch.__version__, "hypothesis": hypothesis.__version__,
                        "python": platform.python_version(), "cpus": os.cpu_count()}
    todo = [name for name in args.boundary or BOUNDARIES
            if args.again or results.get("boundaries", {}).get(name, {}).get("inputs_tried", 0) < args.inputs]
    if not todo:
        print("every boundary is done")
        return
    with tempfile.TemporaryDirectory() as folder:
        fixtures = make_fixtures(Path(folder))
        for name in todo:
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            record = campaign(BOUNDARIES[name], fixtures, inputs=args.inputs, timeout=args.timeout)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            record |= {"peak_rss_mib_before": round(rss_before), "peak_rss_mib": round(peak),
                       "within_rss_bound": peak <= args.rss_bound_gib * 1024, "loadavg": os.getloadavg()}
            results.setdefault("boundaries", {})[name] = record
            atomic_write_json(args.out, results)
            summary = {k: v for k, v in record.items() if k != "failure_examples"}
            print(name, json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
