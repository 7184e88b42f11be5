"""The t and normal distributions the comparison tests need, with or without scipy.

    t_sf(2.1, 3)                  # P(T > 2.1), 3 degrees of freedom
    t_ppf(0.975, 9); normal_two_sided_p(1.96)

scipy's t distribution is used when installed; otherwise an exact pure-Python one (regularised
incomplete beta, Numerical Recipes 6.4) gives the same numbers.
"""

from __future__ import annotations

import math

from radimagenet.errors import ConfigError


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    try:
        from scipy.stats import t as student_t
    except ImportError:
        tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
        return tail if t >= 0 else 1.0 - tail
    return float(student_t.sf(t, df))


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t (inverse CDF), by scipy or by bisection on ``t_sf``."""
    if not 0.0 < q < 1.0:
        raise ConfigError(f"quantile must be in (0, 1), got {q}")
    try:
        from scipy.stats import t as student_t
    except ImportError:
        lo, hi = -1e3, 1e3
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if 1.0 - t_sf(mid, df) < q else (lo, mid)
        return (lo + hi) / 2
    return float(student_t.ppf(q, df))


def normal_two_sided_p(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2.0))
