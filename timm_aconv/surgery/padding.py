"""The padding a convolution applies, as explicit per-side numbers (surgery resizes kernels around it)"""

from typing import Tuple

import torch.nn as nn

__all__ = ['explicit_padding']


def explicit_padding(conv: nn.Conv2d) -> Tuple[int, int]:
    """The symmetric per-side padding ``conv`` applies, with 'same'/'valid' made explicit."""
    if conv.padding == 'valid':
        return 0, 0
    if conv.padding == 'same':
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    return tuple(conv.padding)
