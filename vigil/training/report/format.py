"""How numbers, rates and class names appear in the report, and JSON-safe values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def num(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4g}"


def rate(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.3f}"


def pct(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.2f} %"


def class_name(value: Any, class_names: Sequence[str] | None) -> str:
    try:
        i = int(value)
    except (TypeError, ValueError):
        return str(value)
    if class_names is not None and 0 <= i < len(class_names):
        return f"{class_names[i]}"
    return str(i)


def jsonable(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN and infinities to null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
