from .adaptive_conv import AdaptiveConv2d
from .adaptive_conv_nd import COVARIANCE_TYPES, AdaptiveConv1d, AdaptiveConv3d
from .envelope import centre_energy_fraction, effective_kernel_size, gaussian_envelope
from .kernel_group import KernelGroup, group_adaptive_layers, register_batched_envelopes, ungroup_adaptive_layers
from .mixed_size_conv import MixedSizeConv2d, WindowConv2d
from .sigma import (
    adaptive_layers,
    all_adaptive_layers,
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
from .train_crop import refresh_train_windows, set_train_crop, train_windows

__all__ = [
    'COVARIANCE_TYPES',
    'DEFAULT_CROP_TOL',
    'AdaptiveConv1d',
    'AdaptiveConv2d',
    'AdaptiveConv3d',
    'KernelGroup',
    'MixedSizeConv2d',
    'OutputPixelTracker',
    'WindowConv2d',
    'adaptive_layers',
    'all_adaptive_layers',
    'centre_energy_fraction',
    'clamp_sigmas_',
    'effective_kernel_size',
    'energy_outside_windows',
    'estimated_kernel_flops',
    'gaussian_envelope',
    'group_adaptive_layers',
    'named_adaptive_layers',
    'param_groups',
    'refresh_train_windows',
    'register_batched_envelopes',
    'register_sigma_clamp',
    'set_auto_sigma_clamp',
    'set_train_crop',
    'size_penalty',
    'soft_kernel_size',
    'train_windows',
    'ungroup_adaptive_layers',
]
