"""The t distribution with and without scipy."""

import builtins

import pytest
from scipy import stats as sps

from radimagenet.eval import distributions as dist


def test_t_distribution_without_scipy(monkeypatch) -> None:
    cases = [(2.1, 3, 0.975), (-0.7, 9, 0.6), (5.0, 1, 0.9), (1.3, 40, 0.995)]
    want = [(sps.t.sf(t, df), sps.t.ppf(q, df)) for t, df, q in cases]
    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    for (t, df, q), (sf, ppf) in zip(cases, want, strict=True):
        assert dist.t_sf(t, df) == pytest.approx(sf, rel=1e-9)
        assert dist.t_ppf(q, df) == pytest.approx(ppf, rel=1e-8)
