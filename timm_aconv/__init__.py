""" timm-aconv: adaptive-size convolution kernels for timm and segmentation-models-pytorch

Layer → surgery → registries → recipes:

- :mod:`timm_aconv.layers`: :class:`AdaptiveConv2d`, its envelope and sigma helpers.
- :mod:`timm_aconv.surgery`: :func:`convert_convs`, :func:`fuse_convs`, :func:`summary`.
"""
from .layers import (
    AdaptiveConv2d, adaptive_layers, centre_energy_fraction, clamp_sigmas_, effective_kernel_size,
    gaussian_envelope, param_groups, register_sigma_clamp)
from .surgery import convert_conv, convert_convs, crop_conv, fuse_convs, summary

__version__ = '0.1.0'
