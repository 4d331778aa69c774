"""What the adaptive layers learned: one row per layer"""

from dataclasses import dataclass
from typing import List, Union

import torch
import torch.nn as nn

from ..layers.adaptive_conv import AdaptiveConv2d
from ..layers.adaptive_conv_nd import AdaptiveConvNd
from ..layers.envelope import effective_kernel_size, gaussian_envelope, grid_axis_sq_distances, nd_envelope

__all__ = ['LayerSummary', 'SigmaSummary', 'summary']


@dataclass
class LayerSummary:
    name: str
    grid_size: Union[int, str]  # n of a 2-D layer's n×n grid; the sides of a 1-D / 3-D grid ('7x3x3')
    filters: int
    sigma_min: float
    sigma_median: float
    sigma_max: float
    # effective kernel size (smallest odd centred window holding `energy` of the envelope's
    # energy) implied by the smallest, median and largest sigma; per axis for 1-D / 3-D layers ('5x3x3',
    # each side from the envelope's energy along that axis, with the axis's smallest, median, largest sigma)
    size_min: Union[int, str]
    size_median: Union[int, str]
    size_max: Union[int, str]


class SigmaSummary(List[LayerSummary]):
    """A list of :class:`LayerSummary` that prints as a table."""

    energy: float = 0.95

    def __str__(self) -> str:
        header = ('layer', 'n', 'filters', 'sigma min', 'median', 'max', f'eff. size ({self.energy:.0%} energy)')
        rows = [
            (
                row.name,
                f'{row.grid_size}',
                f'{row.filters}',
                f'{row.sigma_min:.3f}',
                f'{row.sigma_median:.3f}',
                f'{row.sigma_max:.3f}',
                f'{row.size_min} / {row.size_median} / {row.size_max}',
            )
            for row in self
        ]
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
        lines = ['  '.join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]]
        lines.insert(1, '  '.join('-' * width for width in widths))
        return '\n'.join(lines)


def summary(model: nn.Module, energy: float = 0.95) -> SigmaSummary:
    """A table of the adaptive layers of ``model`` (1-D, 2-D and 3-D): name, grid, sigma min/median/max and
    the effective kernel size each of those sigmas implies (``print`` it, or read its rows)."""
    table = SigmaSummary()
    table.energy = energy
    for name, layer in model.named_modules():
        if isinstance(layer, AdaptiveConv2d):
            sigma = layer.sigma.detach().float().cpu()
            picks = torch.stack([sigma.min(), sigma.median(), sigma.max()])
            envelopes = gaussian_envelope(picks, layer.grid_size)
            sizes = [effective_kernel_size(envelope, energy) for envelope in envelopes]
            table.append(
                LayerSummary(name or '(model)', layer.grid_size, layer.out_channels, *map(float, picks), *sizes)
            )
        elif isinstance(layer, AdaptiveConvNd):
            table.append(_nd_row(name or '(model)', layer, energy))
    return table


def _nd_row(name: str, layer: AdaptiveConvNd, energy: float) -> LayerSummary:
    sigma = layer.sigma.detach().float().cpu()
    ndim = len(layer.kernel_size)
    per_axis = sigma[:, None].expand(-1, ndim) if sigma.ndim == 1 else sigma
    picks = torch.stack([per_axis.min(0).values, per_axis.median(0).values, per_axis.max(0).values])  # (3, ndim)
    envelopes = nd_envelope(picks, grid_axis_sq_distances(layer.kernel_size))
    sizes = []
    for envelope in envelopes:
        sides = []
        for axis in range(ndim):  # the energy along one axis: the others summed out
            others = [other for other in range(ndim) if other != axis]
            profile = envelope.square().sum(dim=others) if others else envelope.square()
            sides.append(_window_side(profile, energy))
        sizes.append('x'.join(map(str, sides)))
    grid = 'x'.join(map(str, layer.kernel_size))
    flat = sigma.flatten()
    return LayerSummary(
        name, grid, layer.out_channels, float(flat.min()), float(flat.median()), float(flat.max()), *sizes
    )


def _window_side(profile: torch.Tensor, energy: float) -> int:
    """The smallest odd centred window of a 1-D energy profile holding ``energy`` of it."""
    total, centre = float(profile.sum()), profile.shape[0] // 2
    for radius in range(centre + 1):
        if float(profile[centre - radius : centre + radius + 1].sum()) >= energy * total:
            return 2 * radius + 1
    return profile.shape[0]
