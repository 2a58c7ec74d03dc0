"""How a tuning budget is split over a model's kernels: by each kernel's share of the model's time.

A kernel's share is its calls (the task weight) times its default schedule's measured time, over
the sum of those products. Kernels are searched largest share first, each with trials and seconds
in proportion to its share; a kernel whose portion would not buy a minimal search keeps its
default schedule and its portion goes to the others. Pure arithmetic (no TVM): unit-testable.
"""
from __future__ import annotations

MIN_TRIALS = 16  # a search below this many candidates rarely beats a hand-written default
MIN_SECONDS = 30.0  # about two measured batches on a CPU host


def shares(weights: list[float], seconds: list[float | None]) -> list[float]:
    """Each kernel's fraction of the kernels' time (calls x default time). A kernel whose default
    could not be measured counts as an average one: the search may still find it a schedule."""
    known = [w * s for w, s in zip(weights, seconds) if s is not None]
    average = sum(known) / len(known) if known else 1.0
    spent = [w * s if s is not None else average for w, s in zip(weights, seconds)]
    total = sum(spent)
    return [x / total if total > 0 else 1 / len(spent) for x in spent]


def searched(share: list[float], trials: int | None, seconds: float | None) -> list[bool]:
    """Which kernels get a search: those whose proportional portion of the trial budget and of the
    time budget (each where set) buys a minimal search, recomputed as others drop out so their
    portion is shared by the rest. The largest kernel is always searched: a budget measures something."""
    keep = [s > 0 for s in share]
    while True:
        left = sum(s for s, k in zip(share, keep) if k)
        drop = [k and left > 0 and ((trials is not None and trials * s / left < MIN_TRIALS)
                                    or (seconds is not None and seconds * s / left < MIN_SECONDS))
                for s, k in zip(share, keep)]
        if not any(drop) or sum(keep) == 1:
            break
        smallest = min((s for s, d in zip(share, drop) if d))
        keep = [k and not (d and s == smallest) for s, k, d in zip(share, keep, drop)]  # one at a time
    if not any(keep) and share:
        keep[max(range(len(share)), key=share.__getitem__)] = True
    return keep


def trial_caps(share: list[float], keep: list[bool], caps: list[int | None], total: int | None) -> list[int | None]:
    """Per-kernel trial caps: 0 for kernels not searched; with a global trial budget, each searched
    kernel's portion of it by share (at least MIN_TRIALS, never above its own cap)."""
    left = sum(s for s, k in zip(share, keep) if k)
    out = []
    for s, k, cap in zip(share, keep, caps):
        if not k:
            out.append(0)
            continue
        portion = None if total is None else max(MIN_TRIALS, round(total * s / left))
        out.append(portion if cap is None else cap if portion is None else min(cap, portion))
    return out

