from .adaptive_conv import AdaptiveConv1d, AdaptiveConv2d, AdaptiveConv3d, AdaptiveConvNd
from .covariance import COVARIANCE_TYPES
from .envelope import centre_energy_fraction, effective_kernel_size, gaussian_envelope, normalized_envelope
from .kernel_group import KernelGroup, group_adaptive_layers, ungroup_adaptive_layers
from .mixed_size_conv import MixedSizeConv, WindowConv1d, WindowConv2d, WindowConv3d
from .sigma import (
    adaptive_layers,
    clamp_sigmas_,
    named_adaptive_layers,
    param_groups,
    register_sigma_clamp,
    set_auto_sigma_clamp,
)
from .size_budget import (
    DEFAULT_CROP_TOL,
    OutputPixelTracker,
    energy_outside_windows,
    estimated_kernel_flops,
    size_penalty,
    soft_kernel_size,
)
from .train_crop import crop_windows, refresh_crop_windows, set_train_crop
from .window import energy_outside_boxes

__all__ = [
    'COVARIANCE_TYPES',
    'DEFAULT_CROP_TOL',
    'AdaptiveConv1d',
    'AdaptiveConv2d',
    'AdaptiveConv3d',
    'AdaptiveConvNd',
    'KernelGroup',
    'MixedSizeConv',
    'OutputPixelTracker',
    'WindowConv1d',
    'WindowConv2d',
    'WindowConv3d',
    'adaptive_layers',
    'centre_energy_fraction',
    'clamp_sigmas_',
    'crop_windows',
    'effective_kernel_size',
    'energy_outside_boxes',
    'energy_outside_windows',
    'estimated_kernel_flops',
    'gaussian_envelope',
    'group_adaptive_layers',
    'named_adaptive_layers',
    'normalized_envelope',
    'param_groups',
    'refresh_crop_windows',
    'register_sigma_clamp',
    'set_auto_sigma_clamp',
    'set_train_crop',
    'size_penalty',
    'soft_kernel_size',
    'ungroup_adaptive_layers',
]
