"""The value ranges of config fields, as types: the parser checks them and ``--help`` names them

jsonargparse's own (``PositiveInt``, ``NonNegativeInt``, ``PositiveFloat``, ``NonNegativeFloat``,
``OpenUnitInterval``, ``ClosedUnitInterval``) and the few the recipes add. A field typed with one of them
rejects a value outside the range on the command line, in a YAML file and in Python (``check_fields``),
with a message naming the key and the range, e.g. ``0 does not conform to restriction v>0``.
"""

from typing import Literal

from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnitInterval,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)

__all__ = [
    'AtLeastTwo',
    'ClosedUnitInterval',
    'LeftOpenUnitInterval',
    'NonNegativeFloat',
    'NonNegativeInt',
    'OpenUnitInterval',
    'Optimizer',
    'PositiveFloat',
    'PositiveInt',
    'RightOpenUnitInterval',
    'Scheduler',
]

# (0, 1]: a share that may be all, never none (kernel-FLOPs budgets)
LeftOpenUnitInterval = restricted_number_type('LeftOpenUnitInterval', float, [('>', 0), ('<=', 1)])
# [0, 1): a share that may be none, never all (the augmentation's shift)
RightOpenUnitInterval = restricted_number_type('RightOpenUnitInterval', float, [('>=', 0), ('<', 1)])
# >= 2: kept checkpoints (one save may be half-written), repeats of a t-test
AtLeastTwo = restricted_number_type('AtLeastTwo', int, ('>=', 2))

# the choices recipes override the defaults of
Optimizer = Literal['sgd', 'adam', 'adamw']
Scheduler = Literal['constant', 'plateau', 'one_cycle']
