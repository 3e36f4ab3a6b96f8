"""The README's main job, unchanged: `vaekit train` on the embedded digits with the default preset."""

from __future__ import annotations

import json
import subprocess
import sys


def test_main_job_trains_a_digits_vae_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vaekit", "train", "--quiet"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "digits-vae"
    tests = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"test"' in line]
    assert [r["step"] for r in tests] == [1000, 2000, 3000]
    final = tests[-1]
    assert final["importance_samples"] == 1000 and final["num_images"] == 360
    # a trained model: far below the 64 * ln 2 = 44.4 nats of coin flips, and improving
    assert final["nll"] < 25.0 and final["nll"] < tests[0]["nll"]
    assert final["active_units"] >= 4
    for folder in ("samples", "reconstructions", "traversals", "interpolations"):
        assert (run_dir / folder / "step-3000.png").is_file()
