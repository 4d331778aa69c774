""" Matplotlib figures of training runs, drawn without pyplot (the global backend stays as it is)

- :func:`plot_learning_curves`: loss and validation accuracy per epoch of one run.
- :func:`plot_sigma_histograms`: per adaptive layer, the distribution of sigma over epochs.
- :func:`plot_mean_curves`: the paper's Figures 5–6, mean validation accuracy per epoch over
  repeats with a ±1 std band (ddof=1), one line per (model, kernel size).
- :func:`plot_segmentation_examples`: the paper's Figure 7c–q, input, true and predicted trimaps.
- :func:`plot_size_budget_tradeoff`: validation accuracy against latency and against kernel FLOPs,
  one point per run and mean ± std per arm (the size-budget sweep).
"""
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .segmentation_data import IMAGE_MEAN, IMAGE_STD, TRIMAP_CLASSES
from .statistics import STD_DDOF, describe_curves

__all__ = ['plot_learning_curves', 'plot_sigma_histograms', 'plot_mean_curves', 'plot_segmentation_examples',
           'plot_size_budget_tradeoff']


def plot_learning_curves(history: Sequence[Dict[str, float]], output_dir: str,
                         filename: str = 'learning_curves.png') -> Path:
    """ Train/validation loss and validation accuracy against epochs. """
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


def plot_sigma_histograms(sigma_epochs: Dict[str, List[List[float]]], output_dir: str,
                          filename: str = 'sigma_histograms.png', bins: int = 20) -> Path:
    """ One panel per adaptive layer: sigma histogram (colour = filters) per recorded epoch.

    ``sigma_epochs[layer]`` holds one list of per-filter sigmas per epoch (the first is the
    initial state), as :class:`~timm_aconv.train.callbacks.SigmaRecorder` records it.
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
        image = axis.imshow(counts, origin='lower', aspect='auto', cmap='viridis',
                            extent=(-0.5, len(values) - 0.5, edges[0], edges[-1]))
        axis.set(title=layer, xlabel='epoch (0 = init)', ylabel='sigma')
        figure.colorbar(image, ax=axis, label='filters')
    for axis in list(axes.flat)[len(layers):]:
        axis.axis('off')
    figure.tight_layout()
    path = Path(output_dir) / filename
    figure.savefig(path, dpi=100)
    return path


def plot_mean_curves(curves: Dict[str, np.ndarray], path: str, title: str = 'validation accuracy') -> Path:
    """ ``curves[label]`` is (repeats, epochs) validation accuracy; draws the mean and a ±1 std band
    per label, std with ddof=1 as in the tables (:func:`~timm_aconv.train.statistics.describe_curves`). """
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    for label, accuracy in curves.items():
        mean, std = describe_curves(accuracy)
        epochs = np.arange(1, len(mean) + 1)
        line, = axis.plot(epochs, mean, label=label, linestyle='--' if label.startswith('CONV') else '-')
        axis.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    axis.set(xlabel='epoch', ylabel='mean validation accuracy')
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_title(f'{title}\nmean over repeats, band ±1 std (ddof={STD_DDOF})', fontsize='medium')
    axis.legend(fontsize='small')
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)


TRIMAP_COLOURS = ('#d9822b', '#2e4a7d', '#f5f5f5')  # pet, background, border (TRIMAP_CLASSES' order)


def _trimap_colormap():
    from matplotlib.colors import ListedColormap
    return ListedColormap(list(TRIMAP_COLOURS))


def plot_segmentation_examples(images: torch.Tensor, masks: torch.Tensor, predictions: Dict[str, torch.Tensor]):
    """ The paper's Figure 7c-q: per row an input, its true mask and each model's predicted mask.

    Args:
        images: (N, 3, H, W) network inputs scaled to [-2, 2].
        masks: (N, H, W) true labels.
        predictions: {model label: (N, H, W) predicted labels}.

    Returns:
        The matplotlib figure, with a colour key of the mask classes (:data:`TRIMAP_CLASSES`) below.
    """
    from .kernel_plots import new_figure
    count = images.shape[0]
    for label, predicted in predictions.items():
        if predicted.shape != masks.shape:
            raise ValueError(f'predictions[{label!r}] must have the masks\' shape {tuple(masks.shape)}, '
                             f'got {tuple(predicted.shape)}')
    figure, axes = new_figure(count, 2 + len(predictions), cell_size=2.0)
    colormap = _trimap_colormap()
    shown = (images.detach().float().cpu() * IMAGE_STD + IMAGE_MEAN).clamp(0, 1).permute(0, 2, 3, 1)
    titles = ['input', 'true mask', *predictions]
    for row in range(count):
        panels = [masks[row], *(predicted[row] for predicted in predictions.values())]
        axes[row, 0].imshow(shown[row].numpy())
        for column, panel in enumerate(panels, start=1):
            axes[row, column].imshow(panel.detach().cpu().numpy(), cmap=colormap, vmin=0, vmax=2,
                                     interpolation='nearest')
        for column, axis in enumerate(axes[row]):
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=9)
    from matplotlib.patches import Patch
    key = [Patch(facecolor=colour, edgecolor='0.4', label=name) for name, colour in zip(TRIMAP_CLASSES, TRIMAP_COLOURS)]
    figure.tight_layout(rect=(0, 0.3 / count, 1, 1))  # room for the key below the panels
    figure.legend(handles=key, loc='lower center', ncol=len(key), fontsize=8, frameon=False, title='mask classes',
                  title_fontsize=8)
    return figure


def plot_size_budget_tradeoff(runs: Sequence[Dict], arms: Sequence[Dict], path: str,
                              title: str = 'kernel-size budgets') -> Path:
    """ Deployed validation accuracy against latency (left) and kernel FLOPs (right).

    ``runs`` hold ``arm``, ``deployed_val_accuracy``, ``latency_ms``, ``kernel_flops`` per run; ``arms`` the
    same keys (means) plus ``*_std`` per arm. Runs are faint dots, arms are points with ±1 std bars; the
    right panel adds each adaptive arm's FLOPs estimated from sigma as a hollow marker. Drawn without
    pyplot (the global backend stays as it is).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 2, sharey=True)
    colours = colormaps['tab10']
    for index, arm in enumerate(arms):
        colour = colours(index % 10)
        marker = 's' if arm['arm'].startswith('CONV') else 'o'
        members = [run for run in runs if run['arm'] == arm['arm']]
        for axis, key in zip(axes, ('latency_ms', 'kernel_flops')):
            axis.scatter([run[key] for run in members], [100 * run['deployed_val_accuracy'] for run in members],
                         color=colour, alpha=0.3, s=14, marker=marker)
            axis.errorbar(arm[key], 100 * arm['deployed_val_accuracy'], xerr=arm[f'{key}_std'],
                          yerr=100 * arm['deployed_val_accuracy_std'], color=colour, marker=marker, markersize=7,
                          capsize=3, label=arm['arm'] if key == 'latency_ms' else None)
        if 'estimated_kernel_flops' in arm:
            axes[1].scatter(arm['estimated_kernel_flops'], 100 * arm['deployed_val_accuracy'], s=50,
                            facecolors='none', edgecolors=colour, marker=marker)
    axes[0].set(xlabel='latency per batch (ms, median)', ylabel='deployed validation accuracy (%)')
    axes[1].set(xlabel='kernel FLOPs / full grid (filled: deployed, hollow: estimated from σ)')
    axes[0].legend(fontsize='small')
    figure.suptitle(f'{title}\nbig markers: mean ± 1 std over seeds (ddof=1); faint: single runs', fontsize='medium')
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)
