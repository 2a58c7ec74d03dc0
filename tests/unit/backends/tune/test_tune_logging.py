"""Tuning must not depend on, or disturb, the logging set-up of the process it runs in: a test
runner's or a user's own handlers (pytest 9.2 attaches an unnamed one to non-propagating loggers)."""
from __future__ import annotations

import logging

from accelc import compile as compile_mod
from tests.fixtures.helpers import make_repo, write_recipe
from tests.fixtures.tuning import BASE

RECIPE = BASE + "tuning: {trials: 8, time_budget: 1, threads: 1, database: tuning-db}\n"


class Recorder(logging.Handler):
    """An unnamed handler, as pytest 9.2's LogCaptureHandler is."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_tuning_twice_in_one_process_with_an_unnamed_handler_attached(tmp_path):
    meta_schedule = logging.getLogger("tvm.s_tir.meta_schedule")
    recorder, before = Recorder(), (meta_schedule.propagate, meta_schedule.level, list(meta_schedule.handlers))
    meta_schedule.addHandler(recorder)
    meta_schedule.propagate = False
    try:
        repo = make_repo(tmp_path / "repo")
        recipe = write_recipe(repo, RECIPE)
        for _ in range(2):  # MetaSchedule's own logger set-up crashed here: handler.get_name() is None
            summary = compile_mod.tune_recipe(recipe)
            assert summary["tasks"] == 2 and summary["trials"] >= 1
        # the process's loggers are as they were: nothing reconfigured, nothing added
        assert meta_schedule.handlers == [*before[2], recorder] and recorder.get_name() is None
        assert meta_schedule.level == before[1]
        logs = list((repo / "tuning-db").rglob("logs/task_*.log"))
        # per-task logs still written (8 trials buy a search of the larger kernel only: tune/shares.py)
        assert len(logs) >= 1 and all(path.stat().st_size > 0 for path in logs)
    finally:
        meta_schedule.removeHandler(recorder)
        meta_schedule.propagate = before[0]
