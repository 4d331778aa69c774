"""What the adaptive layers learned: one row per layer"""

from dataclasses import dataclass
from typing import List, Union

import torch
import torch.nn as nn

from ..layers.adaptive_conv import AdaptiveConvNd
from ..layers.envelope import effective_kernel_size, gaussian_envelope

__all__ = ['LayerSummary', 'SigmaSummary', 'summary']


@dataclass
class LayerSummary:
    name: str
    grid_size: Union[int, str]  # n of an isotropic 2-D layer's n×n grid; the sides of any other grid ('7x3', '7x3x3')
    filters: int
    sigma_min: float
    sigma_median: float
    sigma_max: float
    # effective kernel size (smallest odd centred window holding `energy` of the envelope's
    # energy) implied by the smallest, median and largest sigma; per axis for the other layers ('5x3x3':
    # per axis the smallest, median, largest side of the filters' envelopes along that axis)
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
    the effective kernel size each of those sigmas implies (``print`` it, or read its rows). Layers other
    than the isotropic 2-D ones (elliptic, rectangular, 1-D, 3-D) give their sizes per axis ('5x3'): per axis
    the smallest, median and largest side of the filters' envelopes (each side from the envelope's energy
    along that axis)."""
    table = SigmaSummary()
    table.energy = energy
    for name, layer in model.named_modules():
        if isinstance(layer, AdaptiveConvNd) and layer.isotropic and len(layer.kernel_size) == 2:
            sigma = layer.sigma.detach().float().cpu()
            picks = torch.stack([sigma.min(), sigma.median(), sigma.max()])
            envelopes = gaussian_envelope(picks, layer.grid_size)
            sizes = [effective_kernel_size(envelope, energy) for envelope in envelopes]
            table.append(
                LayerSummary(name or '(model)', layer.grid_size, layer.out_channels, *map(float, picks), *sizes)
            )
        elif isinstance(layer, AdaptiveConvNd):
            table.append(_axis_row(name or '(model)', layer, energy))
    return table


def _axis_row(name: str, layer: nn.Module, energy: float) -> LayerSummary:
    with torch.no_grad():
        envelopes = layer.envelope().detach().double().cpu()  # (filters, *grid)
    ndim = envelopes.ndim - 1
    sides = torch.stack(
        [
            _window_sides(envelopes.square().sum(dim=[dim for dim in range(1, ndim + 1) if dim != axis]), energy)
            if ndim > 1
            else _window_sides(envelopes.square(), energy)
            for axis in range(1, ndim + 1)
        ],
        dim=1,
    )  # (filters, ndim)
    sizes = [
        'x'.join(map(str, pick.tolist())) for pick in (sides.min(0).values, sides.median(0).values, sides.max(0).values)
    ]
    grid = 'x'.join(map(str, layer.kernel_size))
    flat = layer.sigma.detach().float().cpu().flatten()
    return LayerSummary(
        name, grid, layer.out_channels, float(flat.min()), float(flat.median()), float(flat.max()), *sizes
    )


def _window_sides(profiles: torch.Tensor, energy: float) -> torch.Tensor:
    """Per row of ``profiles`` (filters, n), the smallest odd centred window holding ``energy`` of it."""
    total, centre = profiles.sum(1), profiles.shape[1] // 2
    sides = torch.full((profiles.shape[0],), profiles.shape[1], dtype=torch.long)
    for radius in range(centre, -1, -1):  # widest first: the smallest window that holds it wins
        inside = profiles[:, centre - radius : centre + radius + 1].sum(1)
        sides = torch.where(inside >= energy * total, torch.tensor(2 * radius + 1), sides)
    return sides
