from .convert import convert_conv, convert_convs
from .export import export_conv, export_learned_sizes
from .fuse import crop_conv, fuse_convs
from .learned_sizes import LayerKernelSizes, LearnedKernelSizes, learned_kernel_sizes
from .summary import LayerSummary, SigmaSummary, summary
from .state_dict import adapt_ordinary_weights, convert_like
from .plain_model import plain_model_from_learned, sizes_per_layer

__all__ = [
    'convert_conv',
    'convert_convs',
    'export_conv',
    'export_learned_sizes',
    'crop_conv',
    'fuse_convs',
    'LayerKernelSizes',
    'LearnedKernelSizes',
    'learned_kernel_sizes',
    'LayerSummary',
    'SigmaSummary',
    'summary',
    'adapt_ordinary_weights',
    'convert_like',
    'plain_model_from_learned',
    'sizes_per_layer',
]
