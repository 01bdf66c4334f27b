"""Small numeric helpers shared by the measures, the placement and the store."""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

import numpy as np


def parabola_vertex(xs: np.ndarray, ys: np.ndarray) -> float:
    """The vertex of the parabola through three points, clipped to half a step around the middle one.

    Meant for a middle point that is the lowest of the three; when the three are not convex
    (collinear, or a maximum) the middle x is the best estimate there is.
    """
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    if not a > 0:
        return float(x1)
    return float(np.clip(-b / (2 * a), (x0 + x1) / 2, (x1 + x2) / 2))


def json_safe(value: Any) -> Any:
    """``value`` in plain JSON types: NaN/inf become None (JSON, and PostgreSQL's json, have
    none), mapping keys strings, tuples and arrays lists, numpy scalars Python numbers, dates
    ISO strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "item") and callable(value.item):  # other numpy scalars
        return json_safe(value.item())
    return value
