"""Cell formatting shared by the tables: values, mean ± std, signed percentages, p-values, Markdown grids."""

from __future__ import annotations

import math
from typing import Sequence

MISSING = "–"
MINUS = "−"


def is_missing(x: float | None) -> bool:
    """True for None and NaN."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_value(x: float | None, digits: int = 4) -> str:
    """A metric value with `digits` decimals, or the missing mark."""
    return MISSING if is_missing(x) else f"{x:.{digits}f}"


def fmt_mean_std(mean: float | None, std: float | None, n: int, digits: int = 4) -> str:
    """`mean ± std` for several seeds, the bare mean for one seed, the missing mark for no run."""
    if is_missing(mean):
        return MISSING
    if n > 1 and not is_missing(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return fmt_value(mean, digits)


def fmt_pct(x: float | None) -> str:
    """A signed percentage with one decimal (0.0412 -> +4.1%, -0.035 -> −3.5%), or the missing mark."""
    return MISSING if is_missing(x) else f"{100 * x:+.1f}%".replace("-", MINUS)


def fmt_p(p: float | None) -> str:
    """`p=0.012` with three decimals, `p<0.001` below that, or the missing mark."""
    if is_missing(p):
        return MISSING
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def markdown_grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
