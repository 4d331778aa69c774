"""What the adaptive layers learned: one row per layer"""

from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn

from ..layers.envelope import effective_kernel_size, gaussian_envelope
from ..layers.sigma import named_adaptive_layers

__all__ = ['LayerSummary', 'SigmaSummary', 'summary']


@dataclass
class LayerSummary:
    name: str
    grid_size: int
    filters: int
    sigma_min: float
    sigma_median: float
    sigma_max: float
    # effective kernel size (smallest odd centred window holding `energy` of the envelope's
    # energy) implied by the smallest, median and largest sigma
    size_min: int
    size_median: int
    size_max: int


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
    """A table of the adaptive layers of ``model``: name, n, sigma min/median/max and the
    effective kernel size each of those sigmas implies (``print`` it, or read its rows)."""
    table = SigmaSummary()
    table.energy = energy
    for name, layer in named_adaptive_layers(model):
        sigma = layer.sigma.detach().float().cpu()
        picks = torch.stack([sigma.min(), sigma.median(), sigma.max()])
        envelopes = gaussian_envelope(picks, layer.grid_size)
        sizes = [effective_kernel_size(envelope, energy) for envelope in envelopes]
        table.append(LayerSummary(name or '(model)', layer.grid_size, layer.out_channels, *map(float, picks), *sizes))
    return table
