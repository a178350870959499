"""Plain-text metric tables for the command line."""

from __future__ import annotations

import math
import numbers
from typing import Mapping


def _cell(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        return f"{v:.3f}" if math.isfinite(v) else str(v)
    return str(value)


def format_table(metrics: Mapping) -> str:
    """Formats metrics as an aligned two-row table: names, then values (floats to 3 decimals).

    Args:
        metrics: mapping name -> number (or str), in the order to print.

    Returns:
        str of two lines, columns right-aligned and separated by " | ".
    """
    if not metrics:
        return "(no metrics)"
    names = [str(k) for k in metrics]
    values = [_cell(v) for v in metrics.values()]
    widths = [max(len(n), len(v)) for n, v in zip(names, values)]
    header = " | ".join(n.rjust(w) for n, w in zip(names, widths))
    row = " | ".join(v.rjust(w) for v, w in zip(values, widths))
    return f"{header}\n{row}"
