""" The paper's statistics: peak summaries and the two-tailed Student t-test. """
import math

import pytest

from timm_aconv.train.statistics import describe_peaks, ttest_peaks


def test_describe_peaks():
    assert describe_peaks([0.9, 0.92, 0.94]) == dict(
        mean=pytest.approx(0.92), std=pytest.approx(0.02), max=0.94, repeats=3)
    assert describe_peaks([0.5]) == dict(mean=0.5, std=0.0, max=0.5, repeats=1)


def test_two_tailed_student_t_test_reference_values():
    # pooled variance 1, standard error sqrt(2/3): t = -3 / sqrt(2/3); p from Student's t with 4 dof
    t_stat, p_value = ttest_peaks([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert t_stat == pytest.approx(-3 / math.sqrt(2 / 3))
    assert p_value == pytest.approx(0.021311641128756, rel=1e-9)
    assert ttest_peaks([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])[0] == pytest.approx(3 / math.sqrt(2 / 3))


def test_t_test_needs_two_runs_per_side():
    assert ttest_peaks([0.9], [0.8, 0.85]) == (None, None)
