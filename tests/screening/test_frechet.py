"""FMD: the symmetric eigen-decomposition agrees with scipy's sqrtm and survives singular sets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from xtalforge.screening.metrics import coverage, frechet_distance


def _reference(a, b):
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    d = a.mean(0) - b.mean(0)
    return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(linalg.sqrtm(s1 @ s2)))


def test_matches_scipy_sqrtm_on_well_conditioned_sets():
    rng = np.random.default_rng(1)
    for _ in range(5):
        a = rng.normal(size=(60, 8))
        b = rng.normal(size=(90, 8)) * rng.uniform(0.5, 2.0, size=8) + 0.4
        assert frechet_distance(a, b) == pytest.approx(_reference(a, b), rel=1e-8, abs=1e-10)


def test_rank_deficient_embeddings_give_a_finite_distance():
    rng = np.random.default_rng(2)
    a = np.repeat(rng.normal(size=(3, 8)), 20, axis=0)  # 3 distinct points in 8 dimensions
    b = np.zeros((40, 8))
    b[:, :2] = rng.normal(size=(40, 2))  # covariance of rank 2
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d >= 0
    assert 0 < coverage(a, b) <= 1
    assert frechet_distance(b, b) == pytest.approx(0.0, abs=1e-8)


def test_nan_rows_of_failed_decodes_are_left_out():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(70, 8)) + 0.2
    with_nan = np.vstack([a, np.full((2, 8), np.nan)])  # two structures that failed to decode
    assert frechet_distance(with_nan, b) == pytest.approx(frechet_distance(a, b))
    with pytest.raises(ValueError, match="at least 2 finite embeddings"):
        frechet_distance(np.full((5, 8), np.nan), b)
