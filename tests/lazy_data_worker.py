"""Subprocess of tests/test_lazy_data.py: trains one config in this process (or in each torchrun process) while a
thread samples the process's anonymous memory, and writes what it saw as JSON.

usage: python tests/lazy_data_worker.py REPORT.json CONFIG.yaml [RESUMED.yaml]
       torchrun --nproc_per_node=2 tests/lazy_data_worker.py REPORT.json CONFIG.yaml
Trains CONFIG, then (if given) resumes its run directory with RESUMED (the same run, more steps).

REPORT (REPORT.rank<r>.json under torchrun): {"start_rss_anon", "peak_rss_anon", "peak_rss_file"} in bytes.
RssAnon counts heap and other private memory, not the resident pages of a read-only memory map (those
are RssFile), so a training split held in memory shows in it and a memory-mapped one does not.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path

import torch.distributed as dist

import vaekit

SAMPLE_SECONDS = 0.002


def rss_kib() -> dict[str, int]:
    """RssAnon and RssFile of /proc/self/status, in KiB."""
    status = Path("/proc/self/status").read_text()
    return {field: int(re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE).group(1))
            for field in ("RssAnon", "RssFile")}


class PeakSampler(threading.Thread):
    """Samples RssAnon and RssFile until stopped, keeping their peaks."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.done = threading.Event()
        self.peaks = {"RssAnon": 0, "RssFile": 0}

    def run(self) -> None:
        while not self.done.is_set():
            now = rss_kib()
            self.peaks = {field: max(self.peaks[field], now[field]) for field in now}
            self.done.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self.done.set()
        self.join()


if __name__ == "__main__":
    report, config, *resumed = map(Path, sys.argv[1:])
    start = rss_kib()["RssAnon"]
    sampler = PeakSampler()
    sampler.start()
    vaekit.train(config, quiet=True)
    for later in resumed:
        vaekit.train(later, resume=True, quiet=True)
    sampler.stop()
    if dist.is_initialized():
        report = report.with_suffix(f".rank{dist.get_rank()}.json")
        dist.destroy_process_group()
    report.write_text(json.dumps({"start_rss_anon": start * 1024, "peak_rss_anon": sampler.peaks["RssAnon"] * 1024,
                                  "peak_rss_file": sampler.peaks["RssFile"] * 1024}))
