"""Instants as the package keeps them: naive UTC ``datetime64[ns]``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["utc_instant"]


def utc_instant(value: Any, name: str = "time") -> np.datetime64:
    """One instant as naive UTC ``datetime64[ns]``: naive input is taken as UTC, tz-aware input is converted.

    Parameters
    ----------
    value : Any
        Anything :class:`pandas.Timestamp` reads (ISO text, datetime, datetime64, Timestamp).
    name : str
        What the value is, for the error message (e.g. ``"time_utc"``).

    Returns
    -------
    numpy.datetime64
        The instant in UTC, nanosecond unit, without a time zone.

    Raises
    ------
    ValueError
        ``"<name> is not a time: <value> (<why>)"`` if it is not a time (or is NaT).
    """
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not a time: {value!r} ({exc})") from None
    if ts is pd.NaT:
        raise ValueError(f"{name} is not a time: {value!r}")
    if ts.tz is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return np.datetime64(ts.as_unit("ns").asm8, "ns")
