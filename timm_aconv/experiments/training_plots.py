"""Matplotlib figures of training runs, drawn without pyplot (the global backend stays as it is)

- :func:`plot_learning_curves`: loss and validation accuracy per epoch of one run.
- :func:`plot_sigma_histograms`: per adaptive layer, the distribution of sigma over epochs.
- :func:`plot_mean_curves`: the paper's Figures 5–6, mean validation accuracy per epoch over
  repeats with a ±1 std band (ddof=1), one line per (model, kernel size).

Figures of single experiments (segmentation examples, the size-budget trade-off, learned kernels)
are in :mod:`timm_aconv.experiments.figures` and :mod:`timm_aconv.experiments.kernel_plots`.
"""

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .statistics import STD_DDOF, describe_curves

__all__ = ['plot_learning_curves', 'plot_mean_curves', 'plot_sigma_histograms']


def plot_learning_curves(
    history: Sequence[Dict[str, float]], output_dir: str, filename: str = 'learning_curves.png'
) -> Path:
    """Train/validation loss and validation accuracy against epochs."""
    epochs = [record['epoch'] for record in history]
    figure = Figure(figsize=(9, 3.5))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [record['train_loss'] for record in history], label='train')
    loss_axes.plot(epochs, [record['val_loss'] for record in history], label='validation')
    loss_axes.set(xlabel='epoch', ylabel='cross-entropy', title='loss')
    loss_axes.legend()
    accuracy_axes.plot(epochs, [record['val_accuracy'] for record in history], color='tab:green')
    accuracy_axes.set(xlabel='epoch', ylabel='accuracy', title='validation accuracy')
    for axes in (loss_axes, accuracy_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    path = Path(output_dir) / filename
    figure.savefig(path, dpi=100)
    return path


def plot_sigma_histograms(
    sigma_epochs: Dict[str, List[List[float]]], output_dir: str, filename: str = 'sigma_histograms.png', bins: int = 20
) -> Path:
    """One panel per adaptive layer: sigma histogram (colour = filters) per recorded epoch.

    ``sigma_epochs[layer]`` holds one list of per-filter sigmas per epoch (the first is the
    initial state), as :class:`~timm_aconv.engine.callbacks.SigmaRecorder` records it.
    """
    layers = list(sigma_epochs)
    columns = min(3, len(layers))
    rows = -(-len(layers) // columns)
    figure = Figure(figsize=(4 * columns, 3 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis, layer in zip(axes.flat, layers):
        values = np.asarray(sigma_epochs[layer])  # (epochs + 1, filters)
        edges = np.linspace(values.min(), values.max() + 1e-6, bins + 1)
        counts = np.stack([np.histogram(epoch_values, edges)[0] for epoch_values in values], axis=1)
        image = axis.imshow(
            counts, origin='lower', aspect='auto', cmap='viridis', extent=(-0.5, len(values) - 0.5, edges[0], edges[-1])
        )
        axis.set(title=layer, xlabel='epoch (0 = init)', ylabel='sigma')
        figure.colorbar(image, ax=axis, label='filters')
    for axis in list(axes.flat)[len(layers) :]:
        axis.axis('off')
    figure.tight_layout()
    path = Path(output_dir) / filename
    figure.savefig(path, dpi=100)
    return path


def plot_mean_curves(curves: Dict[str, np.ndarray], path: str, title: str = 'validation accuracy') -> Path:
    """``curves[label]`` is (repeats, epochs) validation accuracy; draws the mean and a ±1 std band
    per label, std with ddof=1 as in the tables (:func:`~timm_aconv.engine.statistics.describe_curves`)."""
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    for label, accuracy in curves.items():
        mean, std = describe_curves(accuracy)
        epochs = np.arange(1, len(mean) + 1)
        (line,) = axis.plot(epochs, mean, label=label, linestyle='--' if label.startswith('CONV') else '-')
        axis.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    axis.set(xlabel='epoch', ylabel='mean validation accuracy')
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_title(f'{title}\nmean over repeats, band ±1 std (ddof={STD_DDOF})', fontsize='medium')
    axis.legend(fontsize='small')
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)
