from .convert import convert_conv, convert_convs
from .fuse import crop_conv, fuse_convs
from .summary import LayerSummary, SigmaSummary, summary
from .state_dict import adapt_ordinary_weights
