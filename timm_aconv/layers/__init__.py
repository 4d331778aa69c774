from .adaptive_conv import AdaptiveConv2d
from .envelope import centre_energy_fraction, effective_kernel_size, gaussian_envelope
from .kernel_group import KernelGroup, group_adaptive_layers, register_batched_envelopes, ungroup_adaptive_layers
from .mixed_size_conv import MixedSizeConv2d, WindowConv2d
from .sigma import (
    adaptive_layers, clamp_sigmas_, named_adaptive_layers, param_groups, register_sigma_clamp, set_auto_sigma_clamp)
from .size_budget import (
    DEFAULT_CROP_TOL, OutputPixelTracker, energy_outside_windows, estimated_kernel_flops, size_penalty,
    soft_kernel_size)

__all__ = [
    'AdaptiveConv2d',
    'centre_energy_fraction',
    'effective_kernel_size',
    'gaussian_envelope',
    'KernelGroup',
    'group_adaptive_layers',
    'register_batched_envelopes',
    'ungroup_adaptive_layers',
    'MixedSizeConv2d',
    'WindowConv2d',
    'adaptive_layers',
    'clamp_sigmas_',
    'named_adaptive_layers',
    'param_groups',
    'register_sigma_clamp',
    'set_auto_sigma_clamp',
    'DEFAULT_CROP_TOL',
    'OutputPixelTracker',
    'energy_outside_windows',
    'estimated_kernel_flops',
    'size_penalty',
    'soft_kernel_size',
]
