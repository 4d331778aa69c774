from .convert import convert_conv, convert_convs
from .export import export_conv, export_learned_sizes
from .fuse import crop_conv, fuse_convs
from .learned_sizes import LayerKernelSizes, LearnedKernelSizes, learned_kernel_sizes
from .plain_model import plain_model_from_learned, sizes_per_layer
from .state_dict import adapt_ordinary_weights, convert_like
from .summary import LayerSummary, SigmaSummary, summary

__all__ = [
    'LayerKernelSizes',
    'LayerSummary',
    'LearnedKernelSizes',
    'SigmaSummary',
    'adapt_ordinary_weights',
    'convert_conv',
    'convert_convs',
    'convert_like',
    'crop_conv',
    'export_conv',
    'export_learned_sizes',
    'fuse_convs',
    'learned_kernel_sizes',
    'plain_model_from_learned',
    'sizes_per_layer',
    'summary',
]
