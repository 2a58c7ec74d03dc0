"""The edu_churn data generator: seeded, as large as documented, and as dirty as real logs."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # examples/ is imported from the repository, not installed
    sys.path.insert(0, str(ROOT))

from accelc.verify import metrics  # noqa: E402
from accelc.verify.gate_data import load_csv  # noqa: E402
from examples.edu_churn import data, schema  # noqa: E402


@pytest.fixture(scope="module")
def table() -> data.Table:
    return data.generate()  # the default: 50,000 learners (~0.2 s)


def column(table: data.Table, name: str) -> np.ndarray:
    return table.raw[:, schema.INDEX[name]]


def test_same_seed_same_table_other_seed_other_table():
    a, b, c = data.generate(2000, seed=5), data.generate(2000, seed=5), data.generate(2000, seed=6)
    np.testing.assert_array_equal(a.raw, b.raw)  # NaNs in the same places too
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels[:len(a)])


def test_default_size_and_shape(table):
    assert len(np.unique(table.ids)) == data.DEFAULT_LEARNERS
    assert table.raw.shape == (len(table), schema.RAW_WIDTH) and table.raw.dtype == np.float32
    assert 20 <= schema.FEATURES <= 40
    assert 0.2 < table.labels.mean() < 0.4  # churn is common but not the majority


def test_the_dirt_real_logs_have_is_present(table):
    for name in ("days_since_last_login", "video_minutes_per_week", "age_years", "device", "quiz_mean_score"):
        assert 0.005 < np.isnan(column(table, name)).mean() < 0.3, name
    video = column(table, "video_minutes_per_week")
    assert (video < 0).sum() > 100  # impossible: negative minutes
    assert (video > 10080).sum() > 50  # impossible: more than a week
    age = column(table, "age_years")
    assert np.isin(age, [0, 1, 150, 999]).sum() > 100
    assert (column(table, "course_category") == 99).sum() > 100  # unknown category code
    assert len(table) - len(np.unique(table.ids)) > 0.02 * data.DEFAULT_LEARNERS  # duplicated learners
    for name in ("sessions_per_week", "forum_posts_30d", "support_tickets_90d"):
        x = column(table, name).astype(np.float64)
        skew = np.mean((x - x.mean()) ** 3) / x.std() ** 3
        assert skew > 1.0, (name, skew)  # long right tails


def test_duplicates_are_whole_rows_and_dedupe_keeps_one_per_learner(table):
    ids, first = np.unique(table.ids, return_index=True)
    repeated = ids[np.bincount(np.searchsorted(ids, table.ids)) > 1][0]
    rows = table.raw[table.ids == repeated]
    np.testing.assert_array_equal(rows[0], rows[1])
    deduped = data.dedupe(table)
    assert len(deduped) == len(ids) and len(np.unique(deduped.ids)) == len(deduped)


def test_splits_are_disjoint_and_cover_every_learner(table):
    parts = data.split(table)
    sets = [set(part.ids.tolist()) for part in parts.values()]
    assert sum(map(len, sets)) == data.DEFAULT_LEARNERS == len(set.union(*sets))
    assert [len(p) for p in parts.values()] == [35000, 7500, 7500]


def test_labels_follow_the_documented_latent_model():
    rng = np.random.default_rng(0)
    clean = data._behaviour(rng, 20000)
    logit = data.churn_logit(clean)
    labels = rng.random(20000) < 1 / (1 + np.exp(-logit))
    assert 0.85 < metrics.auc(labels, logit) < 0.95  # learnable, not trivial


def test_csv_round_trip(tmp_path):
    small = data.generate(300, seed=3)
    features, labels = load_csv(data.write_csv(small, tmp_path / "l.csv"), list(schema.NAMES), schema.LABEL)
    np.testing.assert_array_equal(features, small.raw)
    np.testing.assert_array_equal(labels, small.labels)


def test_recipe_sources_come_from_the_validation_split():
    raw, labels = data.validation_set()
    assert raw.shape == (7500, schema.RAW_WIDTH) and labels.shape == (7500,)
    batch = data.sample_inputs(16, seed=4)
    assert batch.shape == (16, schema.RAW_WIDTH) and batch.dtype == np.float32
    assert all(((raw == row) | (np.isnan(raw) & np.isnan(row))).all(axis=1).any() for row in batch)
    np.testing.assert_array_equal(batch, data.sample_inputs(16, seed=4))
