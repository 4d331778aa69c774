"""The tables' statistics: peak summaries, the two-tailed Student t-test, Holm, Cohen's d, plot bands."""

import math

import numpy as np
import pytest

from timm_aconv.experiments.statistics import STD_DDOF, cohens_d, describe_peaks, holm_adjust, ttest_peaks


def test_describe_peaks():
    assert describe_peaks([0.9, 0.92, 0.94]) == dict(
        mean=pytest.approx(0.92), std=pytest.approx(0.02), max=0.94, repeats=3
    )
    assert describe_peaks([0.5]) == dict(mean=0.5, std=0.0, max=0.5, repeats=1)


def test_two_tailed_student_t_test_reference_values():
    # pooled variance 1, standard error sqrt(2/3): t = -3 / sqrt(2/3); p from Student's t with 4 dof
    t_stat, p_value = ttest_peaks([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert t_stat == pytest.approx(-3 / math.sqrt(2 / 3))
    assert p_value == pytest.approx(0.021311641128756, rel=1e-9)
    assert ttest_peaks([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])[0] == pytest.approx(3 / math.sqrt(2 / 3))


def test_t_test_needs_two_runs_per_side():
    assert ttest_peaks([0.9], [0.8, 0.85]) == (None, None)


def test_holm_matches_a_hand_computed_family():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1; a test that could not run stays None and is not counted (m = 2)
    assert holm_adjust([0.6, None, 0.2]) == pytest.approx([0.6, None, 0.4])
    assert holm_adjust([0.7, 0.9]) == pytest.approx([1.0, 1.0])


def test_cohens_d_uses_the_pooled_sample_std():
    # means 2 and 5, both sample variances 1: d = (2 - 5) / 1
    assert cohens_d([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(-3.0)
    # unequal sizes: pooled variance (2 * 1 + 1 * 2) / 3 = 4 / 3
    assert cohens_d([1.0, 2.0, 3.0], [0.0, 2.0]) == pytest.approx(1.0 / math.sqrt(4 / 3))
    assert cohens_d([1.0], [2.0, 3.0]) is None and cohens_d([1.0, 1.0], [1.0, 1.0]) is None


def test_plot_bands_use_the_tables_std(tmp_path, monkeypatch):
    import matplotlib.axes

    from timm_aconv.experiments.training_plots import plot_mean_curves

    bands = []
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        'fill_between',
        lambda self, x, low, high, **kwargs: bands.append((np.asarray(low), np.asarray(high))),
    )
    curves = np.array([[0.5, 0.7], [0.7, 0.9], [0.9, 0.8]])
    plot_mean_curves({'ACONV 3×3': curves}, str(tmp_path / 'curves.png'))
    ((low, high),) = bands
    std = np.array([describe_peaks(column)['std'] for column in curves.T])  # ddof=1, as in the tables
    assert STD_DDOF == 1 and std[0] == pytest.approx(0.2)
    np.testing.assert_allclose(high - low, 2 * std)
    np.testing.assert_allclose((high + low) / 2, curves.mean(0))
