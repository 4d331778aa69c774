"""Learned sizes as an architecture: a fresh ordinary model whose convolutions have them

Adaptive kernels as a kernel-size search: train an adaptive model, read each layer's learned
sizes (:func:`timm_aconv.learned_kernel_sizes`), and build the *ordinary* model with one size
per layer (e.g. the 95th percentile of its filters' sizes), to train from scratch as usual:

    >>> learned = timm_aconv.learned_kernel_sizes(adaptive_model)        # e.g. a trained aconv_resnet20
    >>> model = timm_aconv.plain_model_from_learned('conv_resnet20', learned, percentile=95)

The plain model is built by timm (``timm.create_model(name, **kwargs)``, or pass a model), and
each convolution named in ``learned`` gets a fresh ``nn.Conv2d`` of the chosen size, padding
adjusted so that every output keeps its shape and position; the model's own ``init_weights``
(when it has one) then initializes it as a new model of that family.
"""

from typing import Dict, Mapping, Union

import timm
import torch.nn as nn

from .learned_sizes import LayerKernelSizes
from .module_tree import replace_modules

__all__ = ['plain_model_from_learned', 'sizes_per_layer']


def sizes_per_layer(learned: Mapping[str, Union[int, LayerKernelSizes]], percentile: float = 95.0) -> Dict[str, int]:
    """One kernel size per layer: the ``percentile`` of each layer's learned sizes (ints pass through)."""
    sizes = {}
    for name, value in learned.items():
        size = value.percentile(percentile) if isinstance(value, LayerKernelSizes) else value
        if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
            raise ValueError(f'learned[{name!r}] must be an odd kernel size >= 1 or a LayerKernelSizes, got {value!r}')
        sizes[name] = size
    return sizes


def _resized_conv(conv: nn.Conv2d, size: int, name: str) -> nn.Conv2d:
    kernel = conv.kernel_size
    if kernel[0] != kernel[1] or kernel[0] % 2 == 0:
        raise ValueError(
            f"plain_model_from_learned: layer '{name}' has a {kernel[0]}x{kernel[1]} kernel; only odd "
            'square kernels can change size with their outputs kept in place'
        )
    if isinstance(conv.padding, str):
        padding = conv.padding
        if padding == 'valid':
            raise ValueError(
                f"plain_model_from_learned: layer '{name}' has padding='valid', so a new kernel size "
                'would change its output shape'
            )
    else:
        padding = tuple(p + d * (size - kernel[0]) // 2 for p, d in zip(conv.padding, conv.dilation))
        if min(padding) < 0:
            smallest = kernel[0] - 2 * min(p // d for p, d in zip(conv.padding, conv.dilation))
            raise ValueError(
                f"plain_model_from_learned: layer '{name}' (padding {conv.padding}) cannot shrink to "
                f'{size}x{size} without changing its output shape; its smallest size is {smallest}'
            )
    weight = conv.weight
    return nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        size,
        stride=conv.stride,
        padding=padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    ).train(conv.training)


def plain_model_from_learned(
    model: Union[str, nn.Module],
    learned: Mapping[str, Union[int, LayerKernelSizes]],
    percentile: float = 95.0,
    **kwargs,
) -> nn.Module:
    """A fresh ordinary model whose convolutions named in ``learned`` have the learned sizes.

    Args:
        model: a timm model name (built with ``timm.create_model(model, **kwargs)``) or a plain model
            to resize in place (re-initialized through its ``init_weights`` when it has one).
        learned: layer name → :class:`~timm_aconv.LayerKernelSizes` (what :func:`learned_kernel_sizes`
            returns) or an explicit odd size; the names must be ``nn.Conv2d`` layers of the plain model
            (the adaptive model's names: ``aconv_resnet20`` ↔ ``conv_resnet20``, ``aconv_resnet18`` or a
            converted ``resnet18`` ↔ ``resnet18``).
        percentile: which of a layer's filter sizes it gets (95: all but the widest 5%).
        **kwargs: ``timm.create_model`` arguments (``num_classes``, ``in_chans``, ...).

    Returns:
        The plain model (``kernel_size`` of each named conv = its chosen size).
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f'percentile must be in [0, 100], got {percentile!r}')
    if not learned:
        raise ValueError('learned names no layer: pass learned_kernel_sizes(adaptive_model) or {name: size}')
    sizes = sizes_per_layer(learned, percentile)
    if isinstance(model, str):
        model = timm.create_model(model, **kwargs)
    elif kwargs:
        raise ValueError(f'keyword arguments {sorted(kwargs)} are for timm.create_model; model is already built')
    modules = dict(model.named_modules())
    missing = [name for name in sizes if type(modules.get(name)) is not nn.Conv2d]
    if missing:
        convs = [name for name, module in modules.items() if type(module) is nn.Conv2d]
        raise ValueError(
            f'learned names layers that are not nn.Conv2d layers of {type(model).__name__}: {missing}; '
            f'its convolutions: {convs[:12]}{" ..." if len(convs) > 12 else ""}'
        )
    replacements = {modules[name]: _resized_conv(modules[name], size, name) for name, size in sizes.items()}
    model = replace_modules(model, replacements)
    if callable(getattr(model, 'init_weights', None)):
        model.init_weights()  # the family's own initialization, for the new layers too
    return model
