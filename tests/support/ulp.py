"""Comparisons in units of float32 rounding, for reference numbers that came out of another library.

Bit-exactness is only a fair demand where the arithmetic is fully determined by our own float32
operations. Where a reference value went through a transcendental function (sin, cos, exp, pow) of
numpy or torch, the last bit depends on the library build and the CPU's vector unit (SLEEF/SVML
paths differ by up to 1 ulp), so those tests compare within a stated number of ulps instead.
"""

from __future__ import annotations

import numpy as np


def assert_within_ulps(actual, expected, ulps: float, *, scale: float | None = None, what: str = "") -> None:
    """``|actual - expected| <= ulps * spacing(scale)`` elementwise, in float32.

    ``scale`` defaults to each element's own magnitude (a relative, per-value ulp bound); pass the
    magnitude of the largest term of an expression when rounding of its inputs propagates at that
    magnitude (sums of terms, arguments of periodic functions).
    """
    actual = np.asarray(actual, dtype=np.float32)
    expected = np.asarray(expected, dtype=np.float32)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), f"{what}: non-finite values"
    if scale is None:
        unit = np.spacing(np.abs(expected))
    else:
        unit = np.full(expected.shape, np.spacing(np.float32(abs(scale))), dtype=np.float32)
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64)) / unit.astype(np.float64)
    worst = float(err.max()) if err.size else 0.0
    assert worst <= ulps, f"{what}: {worst:.2f} ulps apart (bound {ulps})"
