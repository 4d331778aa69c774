"""A convolution whose filters have different kernel sizes, as plain torch convolutions

:class:`MixedSizeConv` holds one plain convolution per kernel size (a *bucket* of filters; in 1, 2
or 3 dimensions, a size is a box with a side per axis), runs each on the same input and concatenates
their outputs along the channel axis. It is what :func:`timm_aconv.export_learned_sizes` turns an
adaptive layer into: each filter runs at the size it learned instead of the layer's full grid.

Each bucket is a plain convolution or a :class:`WindowConv2d` (``WindowConv1d``, ``WindowConv3d``): one
that may first pick its input channels (the groups a bucket of a grouped or depthwise convolution needs)
and trim the input's border (a window smaller than the original kernel needs less padding than ``'valid'``
gives).

``output_index`` restores the original channel order after the concatenation (a gather);
``None`` means the concatenated order is the one the following layers expect (identity, or the
export permuted those layers' input channels instead).
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['MixedSizeConv', 'WindowConv1d', 'WindowConv2d', 'WindowConv3d', 'WindowConvNd']


class WindowConvNd:
    """What :class:`WindowConv1d` / ``2d`` / ``3d`` add to their torch convolution (a mixin): the convolution of
    ``x[:, input_index]`` with ``input_trim[a]`` entries dropped on both sides of each spatial axis a.

    Args:
        *args, **kwargs: the torch convolution's.
        input_index: input channels to use (None: all, in order).
        input_trim: entries dropped on each side of each spatial axis of the input (zeros: none).
    """

    def __init__(self, *args, input_index: Optional[torch.Tensor] = None, input_trim: Sequence[int] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.select_input = input_index is not None
        self.register_buffer(
            'input_index', input_index if input_index is not None else torch.zeros(0, dtype=torch.long)
        )
        trims = tuple(int(trim) for trim in input_trim) or (0,) * len(self.kernel_size)
        self.input_trim: Tuple[int, ...] = trims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.select_input:
            x = x.index_select(1, self.input_index)
        for axis, trim in enumerate(self.input_trim):
            if trim > 0:
                x = x.narrow(axis + 2, trim, x.shape[axis + 2] - 2 * trim)
        return self._conv_forward(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.select_input:
            text += f', input_channels={self.input_index.numel()}'
        if any(self.input_trim):
            text += f', input_trim={self.input_trim}'
        return text


class WindowConv1d(WindowConvNd, nn.Conv1d):
    """``nn.Conv1d`` on ``x[:, input_index, trim:L - trim]`` (see :class:`WindowConvNd`)."""


class WindowConv2d(WindowConvNd, nn.Conv2d):
    """``nn.Conv2d`` on ``x[:, input_index, trim_h:H - trim_h, trim_w:W - trim_w]`` (see :class:`WindowConvNd`)."""


class WindowConv3d(WindowConvNd, nn.Conv3d):
    """``nn.Conv3d`` on the trimmed, selected input (see :class:`WindowConvNd`)."""


class MixedSizeConv(nn.Module):
    """Buckets of filters with their own kernel sizes; outputs concatenated (and reordered).

    Args:
        buckets: the convolutions (all of one dimension), each producing some of the filters.
        output_index: ``output[:, c] = concatenated[:, output_index[c]]``; None keeps the concatenated order.
        in_channels: the layer's input channels (default: the first bucket's, right unless buckets of a
            grouped layer read a subset of the groups).
        groups: the original layer's groups (descriptive).

    Attributes ``in_channels``, ``out_channels``, ``stride``, ``dilation``, ``groups`` and ``kernel_size``
    (each axis's largest bucket side) describe the layer as a whole.
    """

    __jit_unused_properties__ = ('bucket_sizes',)

    def __init__(
        self,
        buckets: Sequence[nn.Module],
        output_index: Optional[torch.Tensor] = None,
        in_channels: Optional[int] = None,
        groups: int = 1,
    ):
        super().__init__()
        if not buckets:
            raise ValueError('MixedSizeConv needs at least one bucket')
        self.buckets = nn.ModuleList(buckets)
        first = self.buckets[0]
        self.in_channels = in_channels if in_channels is not None else first.in_channels
        self.out_channels = sum(bucket.out_channels for bucket in self.buckets)
        self.stride, self.dilation, self.groups = first.stride, first.dilation, groups
        self.kernel_size = tuple(max(sides) for sides in zip(*(bucket.kernel_size for bucket in self.buckets)))
        if output_index is not None and sorted(output_index.tolist()) != list(range(self.out_channels)):
            raise ValueError(f'output_index must be a permutation of range({self.out_channels})')
        self.reorder_output = output_index is not None
        self.register_buffer(
            'output_index', output_index if output_index is not None else torch.zeros(0, dtype=torch.long)
        )

    @property
    def bucket_sizes(self) -> List[Tuple[Tuple[int, ...], int]]:
        """(kernel sides, filters) of each bucket, in concatenation order."""
        return [(tuple(bucket.kernel_size), bucket.out_channels) for bucket in self.buckets]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [bucket(x) for bucket in self.buckets]
        x = torch.cat(outputs, 1)
        if self.reorder_output:
            x = x.index_select(1, self.output_index)
        return x

    def extra_repr(self) -> str:
        sizes = ', '.join(f'{filters}@{"x".join(map(str, sides))}' for sides, filters in self.bucket_sizes)
        order = 'gathered back' if self.reorder_output else 'as concatenated'
        return f'{self.in_channels}, {self.out_channels}, filters=[{sizes}], output order {order}'
