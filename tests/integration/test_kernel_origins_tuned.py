"""A tuned build records, for each kernel a tuning record scheduled, the default rule when the record
holds that rule's own schedule and "MetaSchedule record" when it holds a searched one: the same
verdict as the tuning summary's, which the tuner reaches by comparing traces."""
from __future__ import annotations

from accelc.bench.kernels import SEARCHED
from tests.fixtures.helpers import make_repo, write_recipe
from tests.fixtures.tuning import TOPPED


def test_tuned_kernels_are_labelled_as_the_tuning_summary_says(tmp_path):
    from accelc.compile import build
    repo = make_repo(tmp_path / "repo")
    manifest = build(write_recipe(repo, TOPPED), output=repo / "build" / "tuned").manifest
    rules = {k.kernel: k.rule for k in manifest.kernels}
    tuned = [row for row in manifest.tuning.kernels if row.status in ("tuned", "reused")]
    assert tuned, manifest.tuning
    for row in tuned:
        assert (rules[row.kernel] == SEARCHED) == (row.schedule == "searched"), (row, rules[row.kernel])
    assert {rules[row.kernel] for row in tuned if row.schedule == "default"} <= {"Matmul"}
    assert sorted(k.modules for k in manifest.kernels if "gemm" in k.tags) == [("fc1",), ("fc2",)]
