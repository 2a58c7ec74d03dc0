"""Soak, short version: 8 threads x 500 calls on one predictor, every answer identical to the
single-threaded one, hostile inputs mixed in each refused with their code, RSS bounded.
benchmarks/soak.py runs 8 x 10,000."""
from __future__ import annotations

from accelc.runtime import predictor as runtime
from benchmarks.soak import soak
from tests.fixtures.helpers import shared_artifact

RSS_GROWTH_MIB = 64  # a leak of anything per call shows long before this; allocator noise does not


def test_eight_threads_get_identical_answers_and_rss_stays_bounded():
    predictor = runtime.load(shared_artifact())
    soak(predictor, threads=8, calls=50)  # warm-up: per-thread VMs and staging buffers
    report = soak(predictor, threads=8, calls=500, bad_every=10)
    assert report.errors == [] and report.mismatches == 0
    assert (report.calls, report.bad_calls) == (8 * 450, 8 * 50)
    if report.rss_start is not None:
        assert report.rss_end - report.rss_start < RSS_GROWTH_MIB, (report.rss_start, report.rss_end)
