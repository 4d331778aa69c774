"""The package's figures leave matplotlib's global state alone (a notebook keeps its inline plots)"""

import importlib

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

import timm_aconv
from timm_aconv.experiments import kernel_plots
from timm_aconv.experiments import training_plots as plots


@pytest.fixture
def svg_backend():
    """A backend other than Agg, so that a switch to Agg shows; the session's comes back afterwards."""
    previous = matplotlib.get_backend()
    matplotlib.use('svg')
    yield 'svg'
    matplotlib.use(previous)


def test_figures_leave_the_backend_and_pyplots_figures_alone(tmp_path, svg_backend, one_torch_thread):
    user_figure = plt.figure()  # a figure of the user's session, which must stay open and the only one
    try:
        figures = plt.get_fignums()
        for module in (plots, kernel_plots):
            importlib.reload(module)  # importing them switches nothing either
        history = [
            dict(epoch=epoch, train_loss=1 / epoch, val_loss=1.2 / epoch, val_accuracy=0.5 + 0.1 * epoch)
            for epoch in (1, 2, 3)
        ]
        written = [
            plots.plot_learning_curves(history, str(tmp_path)),
            plots.plot_sigma_histograms({'conv1': [[0.1, 0.2], [0.15, 0.3]]}, str(tmp_path)),
            plots.plot_mean_curves({'CONV 3×3': np.random.rand(2, 3)}, str(tmp_path / 'curves.png')),
        ]
        kernel_plots.plot_layer_kernels(timm_aconv.AdaptiveConv2d(1, 4, 5)).savefig(tmp_path / 'kernels.png')
        written.append(tmp_path / 'kernels.png')  # (learn_filters.png is drawn on kernel_plots' new_figure too)
        assert matplotlib.get_backend() == svg_backend
        assert plt.get_fignums() == figures
        assert all(path.stat().st_size > 1000 for path in written)
    finally:
        plt.close(user_figure)
