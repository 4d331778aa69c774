"""timm-aconv: adaptive-size convolution kernels for timm and segmentation-models-pytorch

Layers → surgery → registries (timm, SMP) → engine → experiments → recipes; each imports only those
before it. Importing this package registers the timm models (and the SMP ones when SMP is installed)
and exports the first two:

- :mod:`timm_aconv.layers`: :class:`AdaptiveConv2d` (and 1-D, 3-D), its envelope and sigma helpers.
- :mod:`timm_aconv.surgery`: :func:`convert_convs`, :func:`fuse_convs`, :func:`summary`,
  :func:`export_learned_sizes`, :func:`learned_kernel_sizes`, :func:`plain_model_from_learned`.
- :mod:`timm_aconv.models`, :mod:`timm_aconv.smp`: the registrations.
- :mod:`timm_aconv.engine`, :mod:`timm_aconv.experiments`, :mod:`timm_aconv.recipes`: training (the
  ``train`` extra), imported on demand.
"""

import warnings

from .layers import (
    AdaptiveConv1d,
    AdaptiveConv2d,
    AdaptiveConv3d,
    KernelGroup,
    MixedSizeConv,
    OutputPixelTracker,
    adaptive_layers,
    centre_energy_fraction,
    clamp_sigmas_,
    crop_windows,
    effective_kernel_size,
    estimated_kernel_flops,
    gaussian_envelope,
    group_adaptive_layers,
    named_adaptive_layers,
    param_groups,
    refresh_crop_windows,
    register_sigma_clamp,
    set_auto_sigma_clamp,
    set_train_crop,
    size_penalty,
    soft_kernel_size,
    ungroup_adaptive_layers,
)
from .surgery import (
    LayerKernelSizes,
    LearnedKernelSizes,
    adapt_ordinary_weights,
    convert_conv,
    convert_convs,
    convert_like,
    crop_conv,
    export_conv,
    export_learned_sizes,
    fuse_convs,
    learned_kernel_sizes,
    plain_model_from_learned,
    summary,
)

__all__ = [
    'AdaptiveConv1d',
    'AdaptiveConv2d',
    'AdaptiveConv3d',
    'KernelGroup',
    'LayerKernelSizes',
    'LearnedKernelSizes',
    'MixedSizeConv',
    'OutputPixelTracker',
    '__version__',
    'adapt_ordinary_weights',
    'adaptive_layers',
    'centre_energy_fraction',
    'clamp_sigmas_',
    'convert_conv',
    'convert_convs',
    'convert_like',
    'crop_conv',
    'crop_windows',
    'effective_kernel_size',
    'estimated_kernel_flops',
    'export_conv',
    'export_learned_sizes',
    'fuse_convs',
    'gaussian_envelope',
    'group_adaptive_layers',
    'learned_kernel_sizes',
    'named_adaptive_layers',
    'param_groups',
    'plain_model_from_learned',
    'refresh_crop_windows',
    'register_sigma_clamp',
    'set_auto_sigma_clamp',
    'set_train_crop',
    'size_penalty',
    'soft_kernel_size',
    'summary',
    'ungroup_adaptive_layers',
]

__version__ = '0.1.0'

from . import models  # noqa: F401  (registers the timm models)


def _register_smp() -> bool:
    """Registers the SMP encoders and architectures when SMP is installed; a warning naming the supported
    versions when the installed SMP lacks an internal they need (the plugin's core still imports)."""
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return False
    try:
        from . import smp  # noqa: F401  (registers the SMP encoders and architectures)
    except ImportError as error:  # SMP is there but not a version whose internals timm_aconv.smp knows
        warnings.warn(f'{error}; the SMP encoders and architectures are not registered', stacklevel=2)
        return False
    return True


SMP_REGISTERED = _register_smp()
