"""A seeded generator of a realistic learner-behaviour table with a documented churn model, plus
the splits and data sources the recipe names (README.md documents every column).

Labels come from the *clean* behaviour through `churn_logit` (plus noise); the observed table
then gets the dirt real logs have: missing values, impossible values, outliers and duplicated
learners. Torch-free.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .schema import ID, INDEX, LABEL, NAMES

DEFAULT_LEARNERS = 50_000
DEFAULT_SEED = 0
SPLIT = (0.70, 0.15, 0.15)  # train / validation / test, after deduplication


@dataclass
class Table:
    ids: np.ndarray  # int64 [rows]; a duplicated learner repeats its id
    raw: np.ndarray  # float32 [rows, RAW_WIDTH] in schema order; NaN = missing
    labels: np.ndarray  # float32 [rows], 1 = churned

    def take(self, rows: np.ndarray) -> Table:
        return Table(self.ids[rows], self.raw[rows], self.labels[rows])

    def __len__(self) -> int:
        return len(self.ids)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _behaviour(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Clean behaviour driven by latent engagement, skill and sociability."""
    u, skill, social, frustration = (rng.standard_normal(n) for _ in range(4))
    c = {"course_category": rng.choice(6, n, p=[.30, .20, .15, .10, .15, .10]).astype(float),
         "device": rng.choice(3, n, p=[.50, .40, .10]).astype(float),
         "region": rng.choice(6, n, p=[.30, .25, .10, .20, .10, .05]).astype(float)}
    c["paid_plan"] = (rng.random(n) < _sigmoid(-0.4 + 0.6 * u)).astype(float)
    c["discount_used"] = (rng.random(n) < 0.2).astype(float)
    c["referral_signup"] = (rng.random(n) < 0.15).astype(float)
    c["tenure_days"] = np.minimum(rng.lognormal(5.0, 1.0, n), 3650.0)
    c["days_since_last_login"] = rng.exponential(np.exp(1.6 - 0.9 * u))
    c["sessions_per_week"] = rng.poisson(np.exp(1.0 + 0.6 * u) * rng.gamma(2.0, 0.5, n)).astype(float)
    c["avg_session_minutes"] = rng.lognormal(3.0 + 0.15 * u + 0.3 * (c["device"] == 0), 0.5)
    c["video_minutes_per_week"] = c["sessions_per_week"] * c["avg_session_minutes"] * rng.beta(3, 2, n)
    c["videos_completed_30d"] = rng.poisson(c["video_minutes_per_week"] * 4.3 / 15 * _sigmoid(0.5 + 0.8 * u))
    c["quiz_attempts_30d"] = rng.poisson(np.exp(0.6 + 0.5 * u + 0.2 * skill)).astype(float)
    score = np.clip(62 + 12 * skill + 4 * u + rng.normal(0, 8, n), 0, 100)
    c["quiz_mean_score"] = np.where(c["quiz_attempts_30d"] > 0, score, np.nan)
    c["assignment_submission_rate"] = _sigmoid(0.6 + 1.1 * u + 0.3 * skill + rng.normal(0, 0.7, n))
    c["late_submissions_30d"] = rng.poisson(np.exp(-0.7 - 0.4 * skill) * (1 + c["assignment_submission_rate"]))
    c["forum_posts_30d"] = rng.poisson(np.exp(-0.6 + 0.8 * social + 0.3 * u) * rng.gamma(1.0, 1.0, n))
    c["forum_replies_received_30d"] = rng.poisson(0.9 * c["forum_posts_30d"] + 0.1)
    c["courses_enrolled"] = 1 + rng.poisson(0.6 * np.log1p(c["tenure_days"] / 30) * np.exp(0.2 * u))
    c["courses_completed"] = rng.binomial(c["courses_enrolled"].astype(int), _sigmoid(-0.3 + 0.7 * u + 0.3 * skill))
    c["certificates_earned"] = rng.binomial(c["courses_completed"], np.where(c["paid_plan"] > 0, 0.8, 0.3))
    c["support_tickets_90d"] = rng.poisson(np.exp(-1.3 + 0.6 * frustration)).astype(float)
    c["payment_failures_90d"] = rng.poisson(0.25, n) * c["paid_plan"]
    c["notification_open_rate"] = _sigmoid(-0.5 + 0.6 * u + rng.normal(0, 0.8, n))
    shares = {0: (1.0, 5.0), 1: (5.0, 1.5), 2: (4.0, 2.0)}
    c["mobile_session_share"] = np.select([c["device"] == d for d in shares],
                                          [rng.beta(a, b, n) for a, b in shares.values()])
    c["streak_days"] = rng.geometric(1.0 / (1.0 + np.exp(0.8 + 0.9 * u))) - 1.0
    c["age_years"] = np.clip(rng.normal(31 + 3 * (c["course_category"] == 2), 9, n), 14, 85)
    return {k: np.asarray(v, dtype=np.float64) for k, v in c.items()}


CATEGORY_EFFECT = np.array([0.2, -0.1, 0.0, 0.1, 0.35, 0.15])  # per course_category code
INTERCEPT, STRENGTH = -1.5, 1.3  # ~29% churn; STRENGTH scales every behaviour term (Bayes AUC ~0.88)


def churn_logit(c: dict[str, np.ndarray]) -> np.ndarray:
    """The latent churn model on clean behaviour (before noise); README.md explains each term."""
    log_tenure = np.log1p(c["tenure_days"]) - 5.0
    quiz = np.where(np.isnan(c["quiz_mean_score"]), 0.3, -0.02 * (np.nan_to_num(c["quiz_mean_score"]) - 62))
    return INTERCEPT + STRENGTH * (
            + 1.0 * (np.log1p(c["days_since_last_login"]) - 1.6)  # recency dominates
            - 0.5 * (np.log1p(c["sessions_per_week"]) - 1.3)
            - 1.0 * (c["assignment_submission_rate"] - 0.6)
            + quiz  # low scores churn; no attempt at all churns too
            + 0.35 * c["support_tickets_90d"]
            - 0.5 * c["paid_plan"] + 0.9 * c["paid_plan"] * c["payment_failures_90d"]  # failing cards
            + 0.5 * (c["device"] == 1) * (np.log(c["avg_session_minutes"]) - 3.0)  # long sessions on a phone
            - 0.25 * np.log1p(c["forum_posts_30d"])
            - 0.3 * np.log1p(c["streak_days"])
            + 0.125 * log_tenure ** 2 - 0.2 * log_tenure  # new and very old learners leave
            + CATEGORY_EFFECT[c["course_category"].astype(int)]
            + 0.3 * c["discount_used"])


def _dirty(rng: np.random.Generator, raw: np.ndarray) -> None:
    """In place: what real logs contain (the README lists the rates)."""
    n = len(raw)

    def some(fraction: float) -> np.ndarray:
        return rng.random(n) < fraction

    for name, fraction in (("days_since_last_login", .03), ("avg_session_minutes", .04),
                           ("video_minutes_per_week", .05), ("quiz_mean_score", .02), ("age_years", .08),
                           ("assignment_submission_rate", .03), ("notification_open_rate", .06),
                           ("mobile_session_share", .02), ("device", .02), ("region", .01)):
        raw[some(fraction), INDEX[name]] = np.nan
    video, minutes = INDEX["video_minutes_per_week"], INDEX["avg_session_minutes"]
    flip = some(.01)
    raw[flip, video] = -raw[flip, video]  # a logging bug flips the sign
    raw[some(.005), minutes] = -1.0  # "unknown" sentinel
    hit = some(.003)
    raw[hit, video] = rng.uniform(2e4, 1e5, hit.sum())  # more minutes than a week has
    raw[some(.003), INDEX["sessions_per_week"]] *= 40  # bots and scrapers
    raw[some(.002), INDEX["forum_posts_30d"]] *= 50
    hit = some(.005)
    raw[hit, INDEX["age_years"]] = rng.choice([0.0, 1.0, 150.0, 999.0], hit.sum())
    raw[some(.002), INDEX["tenure_days"]] = 99999.0  # placeholder date
    raw[some(.005), INDEX["course_category"]] = 99.0  # category added after the model was trained


def generate(n: int = DEFAULT_LEARNERS, seed: int = DEFAULT_SEED, duplicates: float = 0.03) -> Table:
    """n learners (plus ~`duplicates` of them logged twice), shuffled; same seed, same table."""
    rng = np.random.default_rng(seed)
    clean = _behaviour(rng, n)
    labels = (rng.random(n) < _sigmoid(churn_logit(clean) + rng.normal(0, 0.5, n))).astype(np.float32)
    raw = np.stack([clean[name] for name in NAMES], axis=1)
    _dirty(rng, raw)
    ids = np.arange(100_000, 100_000 + n, dtype=np.int64)
    rows = np.concatenate([np.arange(n), np.flatnonzero(rng.random(n) < duplicates)])
    rows = rows[rng.permutation(len(rows))]
    return Table(ids[rows], raw[rows].astype(np.float32), labels[rows])


def dedupe(table: Table) -> Table:
    """Keep the first row of each learner."""
    _, first = np.unique(table.ids, return_index=True)
    return table.take(np.sort(first))


def split(table: Table, seed: int = DEFAULT_SEED) -> dict[str, Table]:
    """Deduplicate, then a seeded train / validation / test split (no learner in two splits)."""
    table = dedupe(table)
    order = np.random.default_rng(seed + 1).permutation(len(table))
    a = int(SPLIT[0] * len(table))
    b = a + int(SPLIT[1] * len(table))
    return {"train": table.take(order[:a]), "validation": table.take(order[a:b]), "test": table.take(order[b:])}


@lru_cache(maxsize=2)
def default_splits(n: int = DEFAULT_LEARNERS, seed: int = DEFAULT_SEED) -> dict[str, Table]:
    return split(generate(n, seed), seed)


def validation_set() -> tuple[np.ndarray, np.ndarray]:
    """Recipe `data.validation`: raw vectors and labels of the default validation split."""
    part = default_splits()["validation"]
    return part.raw, part.labels


def train_set() -> tuple[np.ndarray, np.ndarray]:
    """Fine-tuning data (prune's `finetune.data`): raw vectors and labels of the training split."""
    part = default_splits()["train"]
    return part.raw, part.labels


def sample_inputs(batch: int, seed: int) -> np.ndarray:
    """Recipe `data.samples`: `batch` raw vectors (NaNs and all) drawn from the validation split."""
    raw = default_splits()["validation"].raw
    return raw[np.random.default_rng(seed).integers(0, len(raw), batch)]


def write_csv(table: Table, path: str | Path) -> Path:
    """The table as a CSV with the schema's header (missing values as empty cells)."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow([ID, *NAMES, LABEL])
        for ident, row, label in zip(table.ids, table.raw, table.labels):
            out.writerow([int(ident), *("" if np.isnan(v) else f"{v:.9g}" for v in row), int(label)])
    return path

