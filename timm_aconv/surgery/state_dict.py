"""Load ordinary (non-adaptive) convolution weights into adaptive layers

A checkpoint of an ordinary network (e.g. SMP's ImageNet ResNet encoders) has only ``weight`` and
``bias`` for the layers that are :class:`~timm_aconv.AdaptiveConv2d` in our models, and their
kernels may be smaller than the adaptive grid (3×3 into 5×5). :func:`adapt_ordinary_weights`
rewrites such entries with the function-preserving conversion of
:func:`timm_aconv.convert_conv` (kernel centred in the grid and divided by the envelope), so the
adaptive model computes exactly what the ordinary one did. It serves timm's
``pretrained_filter_fn`` (``aconv_resnet*`` with ``pretrained=True``) and SMP's encoder weights.

    >>> encoder = smp.encoders.get_encoder('aconv_resnet34')
    >>> ordinary = smp.encoders.get_encoder('resnet34').state_dict()
    >>> encoder.load_state_dict(adapt_ordinary_weights(encoder, ordinary))

:func:`convert_like` goes the other way: it makes adaptive the layers of a plain model that a
checkpoint of its converted form holds as adaptive.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..layers.adaptive_conv import AdaptiveConvNd
from ..layers.covariance import SigmaInit
from ..layers.sigma import named_adaptive_layers
from .convert import convert_conv

__all__ = ['adapt_ordinary_weights', 'convert_like']


def _ordinary_conv(layer: AdaptiveConvNd, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Module:
    """A plain convolution holding the checkpoint's ``weight``/``bias`` with ``layer``'s geometry."""
    conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[weight.ndim](
        weight.shape[1] * layer.groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=layer.stride,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=bias is not None,
        device='meta',
    )
    conv.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias, requires_grad=False)
    return conv


def adapt_ordinary_weights(
    model: nn.Module,
    state_dict: Dict[str, torch.Tensor],
    prefix: str = '',
    sigma_init: Optional[SigmaInit] = None,
) -> Dict[str, torch.Tensor]:
    """``state_dict`` with ordinary conv entries converted for ``model``'s adaptive layers, in place.

    For every adaptive layer in ``model`` whose ``weight`` is in ``state_dict`` (keys
    under ``prefix``) but whose ``sigma`` is not, the ordinary kernel is converted with
    ``convert_conv(preserve=True)`` to the layer's grid size and ``sigma_bounds`` and ``sigma`` is
    added: ``sigma_init`` (None: the layer's own ``sigma_init``; prefer a wide envelope such as
    0.5, which divides the kernels mildly). Entries of adaptive checkpoints (with ``sigma``) are
    left alone. Returns ``state_dict``.
    """
    for name, layer in named_adaptive_layers(model):
        key = f'{prefix}{name}.' if name else prefix
        if key + 'weight' not in state_dict or key + 'sigma' in state_dict:
            continue
        ordinary = _ordinary_conv(layer, state_dict[key + 'weight'], state_dict.get(key + 'bias'))
        adaptive = convert_conv(
            ordinary,
            layer.kernel_size,
            preserve=True,
            sigma_init=layer.sigma_init if sigma_init is None else sigma_init,
            sigma_bounds=layer.sigma_bounds,
            name=key.rstrip('.') or 'conv',
            covariance_type=layer.covariance_type,
        )
        state_dict[key + 'weight'] = adaptive.weight.detach()
        state_dict[key + 'sigma'] = adaptive.sigma.detach()
        if adaptive.theta is not None:
            state_dict[key + 'theta'] = adaptive.theta.detach()
    return state_dict


def convert_like(
    model: nn.Module,
    state_dict: Dict[str, torch.Tensor],
    sigma_bounds: Optional[Tuple[float, float]] = None,
) -> nn.Module:
    """Convert, in place, the ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` layers of ``model`` that are adaptive
    in ``state_dict`` (their ``<name>.sigma`` entries; the grid from ``<name>.weight``, the covariance type
    from sigma's shape and a ``<name>.theta`` entry), so that ``state_dict`` loads strictly.

    How a model converted with :func:`~timm_aconv.convert_convs` and saved by a library that records only
    its own constructor (SMP's ``save_pretrained``) comes back: build the plain model, ``convert_like``,
    load. A checkpoint holds no clamp bounds: ``sigma_bounds`` (None: the paper's (1/n, n)) applies to every
    converted layer.

    Returns:
        ``model`` (or its replacement when ``model`` itself is the converted layer).
    """
    from .convert import convert_convs  # beside convert_conv

    by_kind: Dict[Tuple, list] = {}
    for key in state_dict:
        if key == 'sigma' or key.endswith('.sigma'):
            name = key[: -len('sigma')].rstrip('.')
            prefix = f'{name}.' if name else ''
            weight = state_dict.get(prefix + 'weight')
            if weight is None or weight.ndim not in (3, 4, 5):
                raise ValueError(
                    f"convert_like: state_dict holds '{key}' but no 3-d, 4-d or 5-d '{prefix}weight' beside it"
                )
            if prefix + 'theta' in state_dict:
                covariance_type = 'full'
            else:
                covariance_type = 'diag' if state_dict[key].ndim == 2 else 'spherical'
            kind = (tuple(weight.shape[2:]), covariance_type, weight.ndim - 2)
            by_kind.setdefault(kind, []).append(name)
    for (sides, covariance_type, dims), names in by_kind.items():
        model = convert_convs(
            model,
            sizes=[sides],
            include=names or [''],
            preserve=False,
            sigma_bounds=sigma_bounds,
            skip_pointwise=False,
            dims=[dims],
            covariance_type=covariance_type,
        )
    return model
