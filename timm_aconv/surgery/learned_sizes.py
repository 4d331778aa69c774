"""The kernel size each adaptive filter learned: per filter, per layer, per model

A filter's *learned size* is the smallest centred odd window of its product kernel ``W ∘ U``
(energy summed over input channels) that keeps all but ``crop_tol`` of the filter's energy,
rounded up to one of the allowed ``sizes``. :func:`export_learned_sizes` runs every filter at
that size; :func:`learned_kernel_sizes` reports the sizes before (or instead of) exporting.

    >>> print(timm_aconv.learned_kernel_sizes(model, crop_tol=1e-3))
"""

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..layers.sigma import named_adaptive_layers
from ..layers.size_budget import DEFAULT_CROP_TOL, check_crop_tol, energy_outside_windows

__all__ = ['LayerKernelSizes', 'LearnedKernelSizes', 'check_sizes', 'filter_kernel_sizes', 'learned_kernel_sizes']


def check_sizes(sizes: Optional[Sequence[int]], name: str = 'sizes') -> Optional[Tuple[int, ...]]:
    """``sizes`` as sorted unique odd positive ints (None stays None), or a ValueError naming ``name``."""
    if sizes is None:
        return None
    if isinstance(sizes, (int, str)) or not all(
        isinstance(size, (int, np.integer)) and not isinstance(size, bool) for size in sizes
    ):
        raise ValueError(f'{name} must be a list of odd kernel sizes such as (1, 3, 5, 7) or None, got {sizes!r}')
    bad = [int(size) for size in sizes if size < 1 or size % 2 == 0]
    if bad or not len(sizes):
        raise ValueError(
            f'{name} must list odd kernel sizes >= 1 (a window has a centre tap), got {list(sizes)!r}'
            + (f'; not odd: {bad}' if bad else '')
        )
    return tuple(sorted({int(size) for size in sizes}))


def filter_kernel_sizes(
    kernel: torch.Tensor,
    crop_tol: float = DEFAULT_CROP_TOL,
    sizes: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """The learned size of every filter of ``kernel`` (out, in/groups, n, n), shape (out,), int64.

    Each is the smallest odd centred window whose outside holds at most ``crop_tol`` of the filter's
    energy, raised to the next of ``sizes`` (None: any odd size); n itself is always allowed. A
    filter without energy gets the smallest allowed size.
    """
    crop_tol = check_crop_tol(crop_tol)
    sizes = check_sizes(sizes)
    grid = kernel.shape[-1]
    if kernel.ndim != 4 or kernel.shape[-2] != grid or grid % 2 == 0:
        raise ValueError(f'kernel must be (out, in, n, n) with odd n, got shape {tuple(kernel.shape)}')
    outside = energy_outside_windows(kernel.detach().float().square().sum(1).double())
    needed = 2 * (outside > crop_tol).sum(1) + 1  # outside shares shrink as windows grow
    allowed = torch.tensor(sorted({size for size in sizes or range(1, grid + 1, 2) if size <= grid} | {grid}))
    return allowed[torch.searchsorted(allowed, needed)]


@dataclass
class LayerKernelSizes:
    """The learned sizes of one adaptive layer's filters."""

    name: str
    grid_size: int
    sizes: List[int]  # per filter, in output-channel order
    in_channels_per_group: int
    layer: Optional[nn.Module] = field(default=None, repr=False, compare=False)

    @property
    def counts(self) -> Dict[int, int]:
        """{size: filters}, smallest size first."""
        values, counts = np.unique(np.asarray(self.sizes), return_counts=True)
        return {int(value): int(count) for value, count in zip(values, counts)}

    def percentile(self, q: float) -> int:
        """The ``q``-th percentile (0–100) of the sizes, always one of them (the next higher one)."""
        if not 0 <= q <= 100:
            raise ValueError(f'percentile must be in [0, 100], got {q!r}')
        return int(np.percentile(np.asarray(self.sizes), q, method='higher'))

    @property
    def kernel_flops(self) -> float:
        """Multiply-adds at the learned sizes relative to the full n×n grid."""
        return float(np.square(np.asarray(self.sizes, dtype=np.float64)).mean()) / self.grid_size**2


class LearnedKernelSizes(Dict[str, LayerKernelSizes]):
    """:class:`LayerKernelSizes` per qualified layer name; prints as a table."""

    crop_tol: float = DEFAULT_CROP_TOL

    def kernel_flops(self, output_pixels: Optional[Mapping] = None) -> float:
        """The model's adaptive-layer multiply-adds at the learned sizes relative to the full grids.

        Each filter weighs ``in_channels / groups * output pixels``; ``output_pixels`` maps layers
        (modules or names) to output height × width (e.g. an :class:`~timm_aconv.OutputPixelTracker`),
        None counts per output pixel.
        """
        total = full = 0.0
        for name, row in self.items():
            pixels = 1 if output_pixels is None else output_pixels.get(row.layer, output_pixels.get(name))
            if pixels is None:
                raise ValueError(f'output_pixels has no entry for layer {name!r}')
            weight = float(pixels) * row.in_channels_per_group * len(row.sizes)
            total += weight * row.kernel_flops
            full += weight
        return total / full

    def __str__(self) -> str:
        header = ('layer', 'n', 'filters', f'sizes (crop_tol={self.crop_tol:g}): filters', 'p95', 'kernel FLOPs')
        rows = [
            (
                name,
                str(row.grid_size),
                str(len(row.sizes)),
                '  '.join(f'{size}x{size}: {count}' for size, count in row.counts.items()),
                str(row.percentile(95)),
                f'{row.kernel_flops:.1%}',
            )
            for name, row in self.items()
        ]
        widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
        lines = ['  '.join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]]
        lines.insert(1, '  '.join('-' * width for width in widths))
        return '\n'.join(lines)


def learned_kernel_sizes(
    model: nn.Module,
    crop_tol: float = DEFAULT_CROP_TOL,
    sizes: Optional[Sequence[int]] = None,
) -> LearnedKernelSizes:
    """The learned size of every filter of every adaptive layer of ``model`` (see the module docstring).

    Args:
        model: a model with :class:`~timm_aconv.AdaptiveConv2d` layers (or one such layer).
        crop_tol: the share of each filter's energy its window may leave out, in (0, 1).
        sizes: the allowed window sizes (odd); None allows every odd size up to the grid.

    Returns:
        A :class:`LearnedKernelSizes` (``print`` it, or read ``result[name].counts``,
        ``.percentile(95)``, ``.kernel_flops``).
    """
    crop_tol = check_crop_tol(crop_tol)
    sizes = check_sizes(sizes)
    layers = list(named_adaptive_layers(model))
    if not layers:
        raise ValueError(
            f'model has no AdaptiveConv2d layer ({type(model).__name__}): there are no learned sizes; '
            'train an aconv_* model or a model converted with convert_convs'
        )
    result = LearnedKernelSizes()
    result.crop_tol = crop_tol
    with torch.no_grad():
        for name, layer in layers:
            per_filter = filter_kernel_sizes(layer.product_kernel(), crop_tol, sizes)
            result[name or '(model)'] = LayerKernelSizes(
                name or '(model)', layer.grid_size, per_filter.tolist(), layer.in_channels // layer.groups, layer
            )
    return result
