"""Figures of the paper's experiments, drawn without pyplot (the global backend stays as it is)

- :func:`plot_segmentation_examples`: the paper's Figure 7c–q, input, true and predicted trimaps.
- :func:`plot_size_budget_tradeoff`: validation accuracy against latency and against kernel FLOPs,
  one point per run and mean ± std per arm (the size-budget sweep).
"""

from pathlib import Path
from typing import Dict, Sequence

import torch
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .kernel_plots import new_figure
from .segmentation_data import IMAGE_MEAN, IMAGE_STD, TRIMAP_CLASSES

__all__ = ['plot_segmentation_examples', 'plot_size_budget_tradeoff']

TRIMAP_COLOURS = ('#d9822b', '#2e4a7d', '#f5f5f5')  # pet, background, border (TRIMAP_CLASSES' order)


def _trimap_colormap():
    return ListedColormap(list(TRIMAP_COLOURS))


def plot_segmentation_examples(images: torch.Tensor, masks: torch.Tensor, predictions: Dict[str, torch.Tensor]):
    """The paper's Figure 7c-q: per row an input, its true mask and each model's predicted mask.

    Args:
        images: (N, 3, H, W) network inputs scaled to [-2, 2].
        masks: (N, H, W) true labels.
        predictions: {model label: (N, H, W) predicted labels}.

    Returns:
        The matplotlib figure, with a colour key of the mask classes (:data:`TRIMAP_CLASSES`) below.
    """
    count = images.shape[0]
    for label, predicted in predictions.items():
        if predicted.shape != masks.shape:
            raise ValueError(
                f"predictions[{label!r}] must have the masks' shape {tuple(masks.shape)}, got {tuple(predicted.shape)}"
            )
    figure, axes = new_figure(count, 2 + len(predictions), cell_size=2.0)
    colormap = _trimap_colormap()
    shown = (images.detach().float().cpu() * IMAGE_STD + IMAGE_MEAN).clamp(0, 1).permute(0, 2, 3, 1)
    titles = ['input', 'true mask', *predictions]
    for row in range(count):
        panels = [masks[row], *(predicted[row] for predicted in predictions.values())]
        axes[row, 0].imshow(shown[row].numpy())
        for column, panel in enumerate(panels, start=1):
            axes[row, column].imshow(
                panel.detach().cpu().numpy(), cmap=colormap, vmin=0, vmax=2, interpolation='nearest'
            )
        for column, axis in enumerate(axes[row]):
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=9)
    key = [Patch(facecolor=colour, edgecolor='0.4', label=name) for name, colour in zip(TRIMAP_CLASSES, TRIMAP_COLOURS)]
    figure.tight_layout(rect=(0, 0.3 / count, 1, 1))  # room for the key below the panels
    figure.legend(
        handles=key,
        loc='lower center',
        ncol=len(key),
        fontsize=8,
        frameon=False,
        title='mask classes',
        title_fontsize=8,
    )
    return figure


def plot_size_budget_tradeoff(
    runs: Sequence[Dict], arms: Sequence[Dict], path: str, title: str = 'kernel-size budgets'
) -> Path:
    """Deployed validation accuracy against latency (left) and kernel FLOPs (right).

    ``runs`` hold ``arm``, ``deployed_val_accuracy``, ``latency_ms``, ``kernel_flops`` per run; ``arms`` the
    same keys (means) plus ``*_std`` per arm. Runs are faint dots, arms are points with ±1 std bars; the
    right panel adds each adaptive arm's FLOPs estimated from sigma as a hollow marker. Drawn without
    pyplot (the global backend stays as it is).
    """
    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 2, sharey=True)
    colours = colormaps['tab10']
    for index, arm in enumerate(arms):
        colour = colours(index % 10)
        marker = 's' if arm['arm'].startswith('CONV') else 'o'
        members = [run for run in runs if run['arm'] == arm['arm']]
        for axis, key in zip(axes, ('latency_ms', 'kernel_flops')):
            axis.scatter(
                [run[key] for run in members],
                [100 * run['deployed_val_accuracy'] for run in members],
                color=colour,
                alpha=0.3,
                s=14,
                marker=marker,
            )
            axis.errorbar(
                arm[key],
                100 * arm['deployed_val_accuracy'],
                xerr=arm[f'{key}_std'],
                yerr=100 * arm['deployed_val_accuracy_std'],
                color=colour,
                marker=marker,
                markersize=7,
                capsize=3,
                label=arm['arm'] if key == 'latency_ms' else None,
            )
        if 'estimated_kernel_flops' in arm:
            axes[1].scatter(
                arm['estimated_kernel_flops'],
                100 * arm['deployed_val_accuracy'],
                s=50,
                facecolors='none',
                edgecolors=colour,
                marker=marker,
            )
    axes[0].set(xlabel='latency per batch (ms, median)', ylabel='deployed validation accuracy (%)')
    axes[1].set(xlabel='kernel FLOPs / full grid (filled: deployed, hollow: estimated from σ)')
    axes[0].legend(fontsize='small')
    figure.suptitle(f'{title}\nbig markers: mean ± 1 std over seeds (ddof=1); faint: single runs', fontsize='medium')
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)
