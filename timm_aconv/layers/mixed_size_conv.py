"""A convolution whose filters have different kernel sizes, as plain ``nn.Conv2d`` groups

:class:`MixedSizeConv2d` holds one ``nn.Conv2d`` per kernel size (a *bucket* of filters),
runs each on the same input and concatenates their outputs along the channel axis. It is what
:func:`timm_aconv.export_learned_sizes` turns an adaptive layer into: each filter runs at the
size it learned instead of the layer's full grid.

Each bucket is a :class:`WindowConv2d`: an ``nn.Conv2d`` that may first pick its input
channels (the groups a bucket of a grouped or depthwise convolution needs) and trim the input's
border (a window smaller than the original kernel needs less padding than ``'valid'`` gives).

``output_index`` restores the original channel order after the concatenation (a gather);
``None`` means the concatenated order is the one the following layers expect (identity, or the
export permuted those layers' input channels instead).
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['MixedSizeConv2d', 'WindowConv2d']


class WindowConv2d(nn.Conv2d):
    """``nn.Conv2d`` on ``x[:, input_index, trim_h:H - trim_h, trim_w:W - trim_w]``.

    Args:
        *args, **kwargs: ``nn.Conv2d``'s.
        input_index: input channels to use (None: all, in order).
        input_trim: rows and columns dropped on each side of the input (0, 0: none).
    """

    def __init__(
        self, *args, input_index: Optional[torch.Tensor] = None, input_trim: Tuple[int, int] = (0, 0), **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.select_input = input_index is not None
        self.register_buffer(
            'input_index', input_index if input_index is not None else torch.zeros(0, dtype=torch.long)
        )
        self.input_trim: Tuple[int, int] = (int(input_trim[0]), int(input_trim[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.select_input:
            x = x.index_select(1, self.input_index)
        trim_h, trim_w = self.input_trim
        if trim_h > 0 or trim_w > 0:
            x = x[:, :, trim_h : x.shape[-2] - trim_h, trim_w : x.shape[-1] - trim_w]
        return self._conv_forward(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.select_input:
            text += f', input_channels={self.input_index.numel()}'
        if any(self.input_trim):
            text += f', input_trim={self.input_trim}'
        return text


class MixedSizeConv2d(nn.Module):
    """Buckets of filters with their own kernel sizes; outputs concatenated (and reordered).

    Args:
        buckets: the convolutions, each producing some of the filters.
        output_index: ``output[:, c] = concatenated[:, output_index[c]]``; None keeps the concatenated order.
        in_channels: the layer's input channels (default: the first bucket's, right unless buckets of a
            grouped layer read a subset of the groups).
        groups: the original layer's groups (descriptive).

    Attributes ``in_channels``, ``out_channels``, ``stride``, ``dilation``, ``groups`` and ``kernel_size``
    (the largest bucket's) describe the layer as a whole.
    """

    def __init__(
        self,
        buckets: Sequence[nn.Conv2d],
        output_index: Optional[torch.Tensor] = None,
        in_channels: Optional[int] = None,
        groups: int = 1,
    ):
        super().__init__()
        if not buckets:
            raise ValueError('MixedSizeConv2d needs at least one bucket')
        self.buckets = nn.ModuleList(buckets)
        first = self.buckets[0]
        self.in_channels = in_channels if in_channels is not None else first.in_channels
        self.out_channels = sum(bucket.out_channels for bucket in self.buckets)
        self.stride, self.dilation, self.groups = first.stride, first.dilation, groups
        self.kernel_size = max(bucket.kernel_size for bucket in self.buckets)
        if output_index is not None and sorted(output_index.tolist()) != list(range(self.out_channels)):
            raise ValueError(f'output_index must be a permutation of range({self.out_channels})')
        self.reorder_output = output_index is not None
        self.register_buffer(
            'output_index', output_index if output_index is not None else torch.zeros(0, dtype=torch.long)
        )

    @property
    def bucket_sizes(self) -> List[Tuple[int, int]]:
        """(kernel size, filters) of each bucket, in concatenation order."""
        return [(bucket.kernel_size[0], bucket.out_channels) for bucket in self.buckets]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [bucket(x) for bucket in self.buckets]
        x = torch.cat(outputs, 1)
        if self.reorder_output:
            x = x.index_select(1, self.output_index)
        return x

    def extra_repr(self) -> str:
        sizes = ', '.join(f'{filters}@{size}x{size}' for size, filters in self.bucket_sizes)
        order = 'gathered back' if self.reorder_output else 'as concatenated'
        return f'{self.in_channels}, {self.out_channels}, filters=[{sizes}], output order {order}'
