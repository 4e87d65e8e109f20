"""Early stopping on the validation metric: the official code's rule (RecBole 0.2) or exact comparison.

official: the metric is rounded to 4 decimals (RecBole rounds every reported metric), an epoch counts as
better only if the rounded value is strictly greater, and training stops when the count of epochs without
improvement exceeds `patience` (RecBole's `stopping_step`: with 10, the 11th such epoch stops it).
exact: full-precision comparison, stop when the count reaches `patience`.
"""

from __future__ import annotations

from dataclasses import dataclass

OFFICIAL_DECIMALS = 4


@dataclass(frozen=True)
class Decision:
    """Outcome of one validation: the score kept for comparison, whether it is a new best, whether to stop."""

    score: float
    improved: bool
    stop: bool


def judge(metric: float, best: float, bad_epochs: int, patience: int, mode: str) -> Decision:
    """Compare this epoch's validation metric with the best so far; `bad_epochs` counts before this epoch."""
    score = round(metric, OFFICIAL_DECIMALS) if mode == "official" else metric
    if score > best:
        return Decision(score, True, False)
    bad = bad_epochs + 1
    return Decision(score, False, bad > patience if mode == "official" else bad >= patience)


def stop_reason(metric_name: str, patience: int, mode: str) -> str:
    """The summary's `stopped` text for an early stop."""
    if mode == "official":
        return f"early stop: no {metric_name} improvement (4 decimals) for {patience + 1} epochs (official rule)"
    return f"early stop: no {metric_name} improvement for {patience} epochs"
