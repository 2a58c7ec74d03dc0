"""The raw learner-behaviour schema: one row per learner, columns in the order of the raw feature
vector the compiled predictor takes (numeric columns first, then categorical codes).

Rules as data: each column says its unit, how it is cleaned (valid range, clipping, log1p) and,
for categoricals, the meaning of each numeric code. Torch-free: the numpy pipeline and the CSV
loader use it too.
"""
from __future__ import annotations

from dataclasses import dataclass

ID = "learner_id"
LABEL = "churned"
BIG = 1.0e9  # "no upper bound" that stays finite in float32 buffers


@dataclass(frozen=True)
class Column:
    name: str
    unit: str
    kind: str  # count | continuous | fraction | binary | categorical
    valid: tuple[float, float] = (0.0, BIG)  # outside this range a value is impossible: treated as missing
    log: bool = False  # log1p after clipping (skewed counts and durations)
    categories: tuple[str, ...] = ()  # categorical: code i means categories[i]
    description: str = ""

    @property
    def clipped_by_quantile(self) -> bool:
        """Counts and durations have heavy tails; rates and flags are already bounded."""
        return self.kind in ("count", "continuous")


COLUMNS: tuple[Column, ...] = (
    Column("tenure_days", "days", "continuous", (0, 3650), True, description="days since sign-up"),
    Column("days_since_last_login", "days", "continuous", (0, 3650), True,
           description="days between the last login and the snapshot"),
    Column("sessions_per_week", "sessions/week", "count", (0, 500), True,
           description="mean sessions per week over the last 4 weeks"),
    Column("avg_session_minutes", "minutes", "continuous", (0, 1440), True,
           description="mean session length over the last 4 weeks"),
    Column("video_minutes_per_week", "minutes/week", "continuous", (0, 10080), True,
           description="minutes of video watched per week; a week has 10080 minutes"),
    Column("videos_completed_30d", "videos", "count", log=True, description="videos watched to the end, 30 days"),
    Column("quiz_attempts_30d", "attempts", "count", log=True, description="quiz attempts, 30 days"),
    Column("quiz_mean_score", "percent", "continuous", (0, 100),
           description="mean quiz score; missing when there was no attempt"),
    Column("assignment_submission_rate", "fraction", "fraction", (0, 1),
           description="assignments submitted / assignments due, 30 days"),
    Column("late_submissions_30d", "submissions", "count", log=True, description="late submissions, 30 days"),
    Column("forum_posts_30d", "posts", "count", log=True, description="forum posts written, 30 days"),
    Column("forum_replies_received_30d", "replies", "count", log=True,
           description="replies to the learner's posts, 30 days"),
    Column("courses_enrolled", "courses", "count", (0, 500), True, description="courses ever enrolled in"),
    Column("courses_completed", "courses", "count", (0, 500), True, description="courses ever completed"),
    Column("certificates_earned", "certificates", "count", (0, 500), True, description="certificates earned"),
    Column("support_tickets_90d", "tickets", "count", log=True, description="support tickets opened, 90 days"),
    Column("payment_failures_90d", "failures", "count", log=True, description="failed payments, 90 days"),
    Column("notification_open_rate", "fraction", "fraction", (0, 1),
           description="push/e-mail notifications opened / sent, 30 days"),
    Column("mobile_session_share", "fraction", "fraction", (0, 1),
           description="share of sessions on a phone or tablet, 30 days"),
    Column("streak_days", "days", "count", (0, 3650), True, description="current run of consecutive active days"),
    Column("age_years", "years", "continuous", (13, 100), description="self-reported age"),
    Column("paid_plan", "flag", "binary", (0, 1), description="1 = paid subscription, 0 = free plan"),
    Column("discount_used", "flag", "binary", (0, 1), description="1 = signed up with a discount code"),
    Column("referral_signup", "flag", "binary", (0, 1), description="1 = joined through a referral"),
    Column("course_category", "code", "categorical", categories=(
        "programming", "data_science", "business", "design", "languages", "humanities"),
        description="category of the learner's main course"),
    Column("device", "code", "categorical", categories=("desktop", "mobile", "tablet"),
           description="device of most sessions"),
    Column("region", "code", "categorical", categories=(
        "europe", "north_america", "south_america", "asia", "africa", "oceania"),
        description="billing region"),
)

NUMERIC = tuple(c for c in COLUMNS if c.kind != "categorical")
CATEGORICAL = tuple(c for c in COLUMNS if c.kind == "categorical")
assert COLUMNS == NUMERIC + CATEGORICAL, "numeric columns come first in the raw vector"
NAMES = tuple(c.name for c in COLUMNS)
RAW_WIDTH = len(COLUMNS)
FEATURES = len(NUMERIC) + sum(len(c.categories) for c in CATEGORICAL)  # width after one-hot
INDEX = {name: i for i, name in enumerate(NAMES)}
