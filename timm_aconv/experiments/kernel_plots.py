"""Figures of what adaptive layers learned: weights, envelopes, product kernels, sigma

The paper shows the weight kernel W, the envelope U and the product kernel W ∘ U of a layer side
by side (Figure 2, Figure 4f-i, Figure 5f) and the apertures over training (Figure 4c).

    >>> figure = plot_layer_kernels(model.conv1, max_filters=8)   # rows W, U, W ∘ U
    >>> figure.savefig('kernels.png')

The figures are :class:`matplotlib.figure.Figure` objects made without pyplot: they work on
headless training machines and leave the global backend (a notebook's inline plots) and pyplot's
figure list alone. Show one in a notebook by making it the cell's last expression, or save it.
"""

from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..layers.adaptive_conv import AdaptiveConv2d

__all__ = ['layer_kernel_rows', 'new_figure', 'plot_kernel_row', 'plot_layer_kernels', 'plot_sigma_trajectories']


def new_figure(rows: int, columns: int, cell_size: float = 1.4, squeeze: bool = False):
    """A matplotlib (figure, axes) grid, made without pyplot; axes is 2-d unless ``squeeze``."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(cell_size * columns + 0.6, cell_size * rows + 0.4))
    axes = figure.subplots(rows, columns, squeeze=squeeze)
    return figure, axes


def layer_kernel_rows(layer: nn.Conv2d, in_channel: int = 0, max_filters: Optional[int] = None) -> dict:
    """The kernels of ``layer`` to draw, as {row label: tensor (filters, n, n)}.

    An :class:`AdaptiveConv2d` gives the rows ``W``, ``U`` and ``W ∘ U``; a plain
    :class:`torch.nn.Conv2d` gives its weight only. ``in_channel`` picks the input channel of W.
    """
    if not isinstance(layer, nn.Conv2d):
        raise TypeError(f'layer must be an nn.Conv2d or AdaptiveConv2d, got {type(layer).__name__}')
    channels = layer.weight.shape[1]
    if not 0 <= in_channel < channels:
        raise ValueError(f'in_channel must be in [0, {channels - 1}] for this layer, got {in_channel}')
    count = layer.out_channels if max_filters is None else min(max_filters, layer.out_channels)
    with torch.no_grad():
        weight = layer.weight[:count, in_channel].detach().float().cpu()
        if not isinstance(layer, AdaptiveConv2d):
            return {'W': weight}
        envelope = layer.envelope()[:count].detach().float().cpu()
        return {'W': weight, 'U': envelope, 'W ∘ U': weight * envelope}


def plot_kernel_row(
    axes: Sequence,
    kernels: torch.Tensor,
    label: Optional[str] = None,
    titles: Optional[Sequence[str]] = None,
    cmap: str = 'bone',
) -> None:
    """Draw kernels (k, n, n) into the first k of ``axes``; hides the ticks, labels the row."""
    kernels = kernels.detach().float().cpu()
    for index, axis in enumerate(axes):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= kernels.shape[0]:
            axis.set_axis_off()
            continue
        axis.imshow(kernels[index].numpy(), cmap=cmap, interpolation='nearest')
        if titles is not None and index < len(titles):
            axis.set_title(titles[index], fontsize=7)
    if label:
        axes[0].set_ylabel(label, fontsize=8)


def plot_layer_kernels(layer: nn.Conv2d, in_channel: int = 0, max_filters: int = 12, sigma_titles: bool = True):
    """Weights, envelopes and product kernels of one layer, one column per filter.

    Args:
        layer: an :class:`AdaptiveConv2d` (rows W, U, W ∘ U) or an ``nn.Conv2d`` (row W).
        in_channel: the input channel of W to show.
        max_filters: draw at most this many filters (the first ones).
        sigma_titles: title each column of an adaptive layer with its sigma.

    Returns:
        The matplotlib figure.
    """
    rows = layer_kernel_rows(layer, in_channel, max_filters)
    count = next(iter(rows.values())).shape[0]
    figure, axes = new_figure(len(rows), count)
    titles = None
    if sigma_titles and isinstance(layer, AdaptiveConv2d):
        titles = [f'σ={float(sigma):.2f}' for sigma in layer.sigma[:count].detach()]
    for row_index, (label, kernels) in enumerate(rows.items()):
        plot_kernel_row(axes[row_index], kernels, label, titles if row_index == 0 else None)
    figure.tight_layout()
    return figure


def plot_sigma_trajectories(
    axis, sigma_history: torch.Tensor, labels: Optional[Sequence[str]] = None, xlabel: str = 'iteration'
) -> None:
    """One line per filter of sigma over training; ``sigma_history`` is (steps, filters)."""
    history = torch.as_tensor(sigma_history).detach().float().cpu()
    if history.ndim != 2:
        raise ValueError(f'sigma_history must be (steps, filters), got shape {tuple(history.shape)}')
    for index in range(history.shape[1]):
        label = labels[index] if labels is not None and index < len(labels) else None
        axis.plot(history[:, index].numpy(), linewidth=1, label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel('σ')
    axis.grid(True, alpha=0.3)
    if labels is not None:
        axis.legend(fontsize=6, ncol=2)
