"""The comparison tables' statistics: peak summaries, t-tests, Holm correction, effect sizes

One module for the classification (Algorithm 1) and segmentation tables and the mean-curve
plots, so every table and plot band uses the same standard deviation: the sample standard
deviation, ``ddof = STD_DDOF = 1`` (the authors' scripts printed ``np.std``, ddof=0: multiply
by sqrt((N - 1) / N) to compare). The paper's headline test is the two-tailed Student t-test
(equal variances) of :func:`ttest_peaks`; testing several kernel sizes is several tests, which
:func:`holm_adjust` corrects for; :func:`cohens_d` gives the effect size.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

__all__ = ['STD_DDOF', 'cohens_d', 'describe_curves', 'describe_peaks', 'holm_adjust', 'ttest_peaks']

STD_DDOF = 1  # sample standard deviation in every table and plot band


def _std(values: np.ndarray, axis: Optional[int] = None) -> np.ndarray:
    """The sample standard deviation (ddof=STD_DDOF), 0 for a single value."""
    count = values.shape[0] if axis == 0 else values.size
    return values.std(axis=axis, ddof=STD_DDOF if count > STD_DDOF else 0)


def describe_peaks(peaks: Sequence[float]) -> Dict[str, float]:
    """Mean, standard deviation (ddof=1; 0 for a single run), max and count of per-run peak scores."""
    values = np.asarray(peaks, dtype=float)
    return dict(mean=float(values.mean()), std=float(_std(values)), max=float(values.max()), repeats=len(values))


def describe_curves(curves: Sequence[Sequence[float]]) -> Tuple[np.ndarray, np.ndarray]:
    """Per-epoch mean and standard deviation (ddof=1; 0 for one run) of (repeats, epochs) curves."""
    values = np.asarray(curves, dtype=float)
    if values.ndim != 2:
        raise ValueError(f'curves must be (repeats, epochs), got shape {values.shape}')
    return values.mean(0), _std(values, axis=0)


def ttest_peaks(first: Sequence[float], second: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Two-tailed Student t-test (equal variances, as the paper) of ``first`` against ``second``:
    (t, p), positive t when ``first`` is higher; (None, None) when either side has one run."""
    if len(first) < 2 or len(second) < 2:
        return None, None
    result = stats.ttest_ind(np.asarray(first, dtype=float), np.asarray(second, dtype=float))
    return float(result.statistic), float(result.pvalue)


def holm_adjust(p_values: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm's step-down adjusted p-values of a family of tests, in the given order.

    With the m defined p-values sorted ascending, p_(i) becomes max over j <= i of
    min(1, (m - j + 1) p_(j)); rejecting where the adjusted value is < alpha controls the
    family-wise error rate at alpha. ``None`` (a test that could not run) stays ``None`` and is
    not counted in m.
    """
    defined = [(p_value, index) for index, p_value in enumerate(p_values) if p_value is not None]
    adjusted: List[Optional[float]] = [None] * len(p_values)
    running_max = 0.0
    for rank, (p_value, index) in enumerate(sorted(defined)):
        running_max = max(running_max, min(1.0, (len(defined) - rank) * p_value))
        adjusted[index] = running_max
    return adjusted


def cohens_d(first: Sequence[float], second: Sequence[float]) -> Optional[float]:
    """Cohen's d of ``first`` against ``second``: the difference of means over the pooled sample
    standard deviation (the t-test's); positive when ``first`` is higher. None with fewer than two
    runs per side or no spread at all."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if len(first) < 2 or len(second) < 2:
        return None
    pooled_variance = ((len(first) - 1) * first.var(ddof=1) + (len(second) - 1) * second.var(ddof=1)) / (
        len(first) + len(second) - 2
    )
    if pooled_variance == 0:
        return None
    return float((first.mean() - second.mean()) / np.sqrt(pooled_variance))
