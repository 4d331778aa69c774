"""``aconv_converted``: any timm model with chosen convolutions made adaptive, as a timm architecture

A model made adaptive with :func:`~timm_aconv.convert_convs` is timm's ``base`` model plus the
conversion; this entrypoint builds exactly that from two serializable arguments, so that timm's own
loader rebuilds a converted model saved with ``save_for_hf`` / ``push_to_hf_hub`` (``config.json``:
``"architecture": "aconv_converted"``, ``model_args`` ``base`` and ``convert``)::

    >>> model = timm.create_model('aconv_converted', base='resnet18', convert=dict(sizes=[5], exclude=['conv1']))
    >>> model = timm.create_model('local-dir:runs/digits_resnet10t/best', pretrained=True)  # as trained
"""

from typing import Any, Dict, Optional

import timm
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..surgery import convert_convs

__all__ = ['converted_model', 'converted_model_args']


def converted_model(base: str = 'resnet18', convert: Optional[Dict[str, Any]] = None, **kwargs: Any) -> nn.Module:
    """timm's ``base`` architecture (built with ``kwargs``, no pretrained weights) with
    ``convert_convs(model, **convert)`` applied (default: ``convert_convs``' own, every k×k conv to
    7×7); ``preserve`` defaults to False here (weights follow)."""
    if not isinstance(base, str) or not base:
        raise ValueError(f'base must be the name of a timm model, got {base!r}')
    model = timm.create_model(base, pretrained=False, **kwargs)
    return convert_convs(model, **{'preserve': False, **(convert or {})})


def converted_model_args(base: str, sizes, include=None, exclude=None, sigma_init=None) -> Dict[str, Any]:
    """The ``model_args`` that rebuild ``convert_convs(timm.create_model(base), sizes, ...)`` as ``aconv_converted``."""
    convert = dict(
        sizes=list(sizes) if isinstance(sizes, (list, tuple)) else [sizes],
        include=include,
        exclude=exclude,
        sigma_init=sigma_init,
    )
    return dict(base=base, convert={name: value for name, value in convert.items() if value is not None})


@register_model
def aconv_converted(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``base`` (a timm model name) with ``convert_convs(**convert)`` applied; see the module docstring."""
    return build_model_with_cfg(converted_model, 'aconv_converted', pretrained, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        # the default base's (resnet18); a saved model's config.json replaces them (input size, normalization,
        # classes)
        'aconv_converted': {
            'url': '',
            'num_classes': 1000,
            'input_size': (3, 224, 224),
            'pool_size': (7, 7),
            'first_conv': 'conv1',
            'classifier': 'fc',
            'crop_pct': 1.0,
            'interpolation': 'bilinear',
            'mean': (0.485, 0.456, 0.406),
            'std': (0.229, 0.224, 0.225),
        },
    }
)
