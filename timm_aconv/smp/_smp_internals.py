"""The segmentation-models-pytorch internals the registrations use, imported in one place

SMP has no public API to add encoders or architectures: :mod:`.encoders` subclasses its ResNet
encoder and copies its registry entries, :mod:`.registry` adds names to its two registries, and
:mod:`.aconv_unet` decorates its constructor the way SMP's own architectures do.
"""

import segmentation_models_pytorch as smp

TESTED_SMP = 'segmentation-models-pytorch>=0.5 (tested 0.5.0 and 0.6.0)'


class SmpVersionError(ImportError):
    """The installed SMP lacks an internal that the registrations need."""


try:
    # internal: SMP's ResNet encoder (subclassed) and its registry entries (copied)
    # internal: the decorator SMP's architectures put on __init__ so from_pretrained can rebuild them
    from segmentation_models_pytorch.base.hub_mixin import supports_config_loading
    from segmentation_models_pytorch.encoders.resnet import ResNetEncoder, resnet_encoders

    # internal registries: encoder name -> entry, architecture name -> class (smp.create_model)
    ENCODER_REGISTRY = smp.encoders.encoders
    ARCHITECTURE_REGISTRY = smp.MODEL_ARCHITECTURES_MAPPING
except (ImportError, AttributeError) as error:
    raise SmpVersionError(
        f'timm_aconv.smp uses segmentation-models-pytorch internals ({error}) that SMP '
        f'{getattr(smp, "__version__", "(unknown version)")} does not have; supported: {TESTED_SMP}'
    ) from error

__all__ = [
    'ARCHITECTURE_REGISTRY',
    'ENCODER_REGISTRY',
    'TESTED_SMP',
    'ResNetEncoder',
    'SmpVersionError',
    'resnet_encoders',
    'supports_config_loading',
]
