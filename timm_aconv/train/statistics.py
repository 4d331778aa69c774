""" The paper's statistics (Algorithm 1): per-run peak scores summarized and compared by t-test """
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

__all__ = ['describe_peaks', 'ttest_peaks']


def describe_peaks(peaks: Sequence[float]) -> Dict[str, float]:
    """ Mean, standard deviation (ddof=1; 0 for a single run), max and count of per-run peak scores. """
    values = np.asarray(peaks, dtype=float)
    return dict(
        mean=float(values.mean()), std=float(values.std(ddof=1 if len(values) > 1 else 0)),
        max=float(values.max()), repeats=len(values))


def ttest_peaks(first: Sequence[float], second: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """ Two-tailed Student t-test (equal variances, as the paper) of ``first`` against ``second``:
    (t, p), positive t when ``first`` is higher; (None, None) when either side has one run. """
    if len(first) < 2 or len(second) < 2:
        return None, None
    result = stats.ttest_ind(np.asarray(first, dtype=float), np.asarray(second, dtype=float))
    return float(result.statistic), float(result.pvalue)
