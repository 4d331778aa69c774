"""The kernel size each adaptive filter learned: per filter, per layer, per model

A filter's *learned size* is the smallest centred odd window of its product kernel ``W ∘ U``
(energy summed over input channels) that keeps all but ``crop_tol`` of the filter's energy,
rounded up to one of the allowed ``sizes``. :func:`export_learned_sizes` runs every filter at
that size; :func:`learned_kernel_sizes` reports the sizes before (or instead of) exporting. Layers
other than the circular 2-D ones (elliptic, rectangular, 1-D, 3-D) learn a size per axis: the
centred box with the fewest taps that keeps all but ``crop_tol`` (e.g. 7x3).

    >>> print(timm_aconv.learned_kernel_sizes(model, crop_tol=1e-3))
"""

import collections
import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..layers.adaptive_conv import AdaptiveConvNd
from ..layers.window import DEFAULT_CROP_TOL, check_crop_tol, smallest_boxes

__all__ = [
    'LayerKernelSizes',
    'LearnedKernelSizes',
    'check_sizes',
    'filter_window_sizes',
    'learned_kernel_sizes',
]


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


def filter_window_sizes(
    kernel: torch.Tensor,
    crop_tol: float = DEFAULT_CROP_TOL,
    sizes: Optional[Sequence[int]] = None,
    square: bool = False,
) -> torch.Tensor:
    """The learned window of every filter of ``kernel`` (out, in/groups, *sides) with odd sides, shape (out, ndim),
    int64: per filter the centred box with the fewest taps whose outside holds at most ``crop_tol`` of its energy
    (:func:`~timm_aconv.layers.window.smallest_boxes`; ``square``: square or cubic windows of a grid of equal
    sides), each side raised to the next of ``sizes`` (None: any odd size; the axis's own side is always
    allowed). A filter without energy gets the smallest allowed window."""
    crop_tol = check_crop_tol(crop_tol)
    sizes = check_sizes(sizes)
    grid = tuple(kernel.shape[2:])
    if kernel.ndim < 3 or any(side % 2 == 0 for side in grid) or (square and len(set(grid)) > 1):
        raise ValueError(
            f'kernel must be (out, in, *sides) with odd sides{", all equal" if square else ""}, '
            f'got shape {tuple(kernel.shape)}'
        )
    energy = kernel.detach().square().sum(1)
    boxes = smallest_boxes(energy, len(grid), crop_tol, square=square)
    for axis, side in enumerate(grid):
        allowed = torch.tensor(sorted({size for size in sizes or range(1, side + 1, 2) if size <= side} | {side}))
        boxes[:, axis] = allowed[torch.searchsorted(allowed, boxes[:, axis].contiguous())]
    return boxes


@dataclass
class LayerKernelSizes:
    """The learned sizes of one adaptive layer's filters: an int per filter (n×n windows of an isotropic 2-D
    layer), or a tuple of sides per filter (boxes of any other layer, ``grid_size`` then its sides)."""

    name: str
    grid_size: Union[int, Tuple[int, ...]]
    sizes: List[Union[int, Tuple[int, ...]]]  # per filter, in output-channel order
    in_channels_per_group: int
    layer: Optional[nn.Module] = field(default=None, repr=False, compare=False)

    @property
    def per_axis(self) -> bool:
        """Whether the sizes are boxes (a side per axis) rather than square windows."""
        return isinstance(self.grid_size, tuple)

    @property
    def counts(self) -> Dict[Union[int, Tuple[int, ...]], int]:
        """{size: filters}, smallest size (fewest taps) first."""
        counted = collections.Counter(self.sizes)
        return {size: counted[size] for size in sorted(counted, key=lambda size: (self._taps(size), size))}

    def percentile(self, q: float) -> Union[int, Tuple[int, ...]]:
        """The ``q``-th percentile (0–100) of the sizes, always one of them (the next higher one); per axis for
        boxes."""
        if not 0 <= q <= 100:
            raise ValueError(f'percentile must be in [0, 100], got {q!r}')
        values = np.asarray(self.sizes)
        if self.per_axis:
            return tuple(int(value) for value in np.percentile(values, q, axis=0, method='higher'))
        return int(np.percentile(values, q, method='higher'))

    def _taps(self, size) -> int:
        return math.prod(size) if self.per_axis else size * size

    @property
    def kernel_flops(self) -> float:
        """Multiply-adds at the learned sizes relative to the full grid."""
        taps = np.asarray([self._taps(size) for size in self.sizes], dtype=np.float64)
        return float(taps.mean()) / self._taps(self.grid_size)


def _size_text(size) -> str:
    return 'x'.join(map(str, size)) if isinstance(size, tuple) else str(size)


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
                _size_text(row.grid_size),
                str(len(row.sizes)),
                '  '.join(
                    f'{_size_text(size) if row.per_axis else f"{size}x{size}"}: {count}'
                    for size, count in row.counts.items()
                ),
                _size_text(row.percentile(95)),
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
        model: a model with adaptive layers (or one such layer), of any dimension.
        crop_tol: the share of each filter's energy its window may leave out, in (0, 1).
        sizes: the allowed window sizes (odd); None allows every odd size up to the grid.

    Returns:
        A :class:`LearnedKernelSizes` (``print`` it, or read ``result[name].counts``,
        ``.percentile(95)``, ``.kernel_flops``).
    """
    crop_tol = check_crop_tol(crop_tol)
    sizes = check_sizes(sizes)
    layers = [(name, layer) for name, layer in model.named_modules() if isinstance(layer, AdaptiveConvNd)]
    if not layers:
        raise ValueError(
            f'model has no adaptive layer ({type(model).__name__}): there are no learned sizes; '
            'train an aconv_* model or a model converted with convert_convs'
        )
    result = LearnedKernelSizes()
    result.crop_tol = crop_tol
    with torch.no_grad():
        for name, layer in layers:
            windows = filter_window_sizes(layer.product_kernel(), crop_tol, sizes, square=layer.isotropic).tolist()
            if layer.isotropic and len(layer.kernel_size) == 2:  # n×n windows: one side each
                grid, per_filter = layer.grid_size, [window[0] for window in windows]
            else:
                grid, per_filter = tuple(layer.kernel_size), [tuple(window) for window in windows]
            result[name or '(model)'] = LayerKernelSizes(
                name or '(model)', grid, per_filter, layer.in_channels // layer.groups, layer
            )
    return result
