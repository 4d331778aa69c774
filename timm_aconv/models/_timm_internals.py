"""The private timm helpers the models use, imported in one place

timm exports no public name for these (as of timm 1.0.31); they are part of its model-writing
toolkit that timm's own models import the same way. Tested with timm 1.0.16 and 1.0.31.
"""

import timm

TESTED_TIMM = 'timm>=1.0.16 (tested 1.0.16 and 1.0.31)'

try:
    # private: timm.models._features (forward_intermediates' index handling in every timm model)
    from timm.models._features import feature_take_indices
except ImportError as error:
    raise ImportError(
        f"timm_aconv's models use timm's private timm.models._features.feature_take_indices, which "
        f'timm {timm.__version__} does not have; supported: {TESTED_TIMM}'
    ) from error

__all__ = ['TESTED_TIMM', 'feature_take_indices']
