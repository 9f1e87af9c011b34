"""Input checks shared by the physics functions.

Physics functions never return a silent NaN: bad input raises ``ValueError``
naming the variable and what is wrong with it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def check_range(
    name: str,
    values: ArrayLike,
    lower: float,
    upper: float,
    *,
    unit: str = "",
    allow_nan: bool = False,
    keep_float: bool = False,
) -> NDArray[np.floating]:
    """Return ``values`` as a float array after checking it is finite and in range.

    Parameters
    ----------
    name : str
        Variable name used in the error message.
    values : array_like
        Values to check.
    lower, upper : float
        Inclusive valid range, in the variable's unit.
    unit : str, optional
        Unit appended to the message.
    allow_nan : bool, optional
        If true, NaN is accepted (masked pixels) and only finite values are range-checked.
    keep_float : bool, optional
        Return a floating-point input as it is (float32 stays float32, no copy); others become float64.

    Returns
    -------
    numpy.ndarray
        The values as a float64 array (no copy when already float64), or in their own float dtype
        with ``keep_float``.

    Raises
    ------
    ValueError
        If a value is NaN or infinite (unless ``allow_nan``), or outside ``[lower, upper]``.
    """
    arr = np.asarray(values)
    if not (keep_float and arr.dtype.kind == "f"):
        arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not allow_nan and not finite.all():
        n_bad = int((~finite).sum())
        raise ValueError(f"{name}: {n_bad} non-finite value(s) (NaN or inf)")
    if allow_nan and np.isinf(arr).any():
        raise ValueError(f"{name}: infinite value(s)")
    vals = arr[finite] if not finite.all() else arr
    if vals.size:
        lo, hi = float(vals.min()), float(vals.max())
        if lo < lower or hi > upper:
            u = f" {unit}" if unit else ""
            raise ValueError(
                f"{name}: values span [{lo:.6g}, {hi:.6g}]{u}, outside the valid range "
                f"[{lower:g}, {upper:g}]{u}"
            )
    return arr
