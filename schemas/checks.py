"""Small field validators used by every record's ``validate()``.

Each raises :class:`SchemaError` naming the record and field; none returns a value
that must be checked by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from schemas.errors import SchemaError


def require_str(record: str, field: str, value: object, *, nonempty: bool = True) -> None:
    if not isinstance(value, str):
        raise SchemaError(record, field, f"expected a string, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise SchemaError(record, field, "must not be empty")


def require_int(record: str, field: str, value: object, *, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SchemaError(record, field, f"expected an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise SchemaError(record, field, f"must be >= {minimum}, got {value}")


def require_positive(record: str, field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SchemaError(record, field, f"expected a number, got {type(value).__name__}")
    if not np.isfinite(value) or value <= 0:
        raise SchemaError(record, field, f"must be a positive finite number, got {value}")


def require_choice(record: str, field: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise SchemaError(record, field, f"must be one of {list(allowed)}, got {value!r}")


def require_array(
    record: str,
    field: str,
    value: object,
    *,
    shape: tuple[int | None, ...],
    dtype: type | np.dtype | None = None,
    finite: bool = False,
) -> None:
    """Check an ndarray's rank, fixed dims (``None`` = any size), dtype and finiteness."""
    if not isinstance(value, np.ndarray):
        raise SchemaError(record, field, f"expected a numpy array, got {type(value).__name__}")
    if value.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(value.shape, shape, strict=False)
    ):
        pretty = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise SchemaError(record, field, f"expected shape {pretty}, got {tuple(value.shape)}")
    if dtype is not None and value.dtype != np.dtype(dtype):
        raise SchemaError(record, field, f"expected dtype {np.dtype(dtype)}, got {value.dtype}")
    if finite and value.size and not np.isfinite(value).all():
        bad = int((~np.isfinite(value)).sum())
        raise SchemaError(record, field, f"contains {bad} NaN/inf value(s)")
