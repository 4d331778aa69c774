"""The value ranges and choices the configs share, beyond jsonargparse's own (``PositiveInt``, ``OpenUnitInterval``,
... in :mod:`jsonargparse.typing`): a field typed with one is checked by the parser and named in ``--help``"""

from typing import Literal

from jsonargparse.typing import restricted_number_type

__all__ = ['AtLeastTwo', 'LeftOpenUnitInterval', 'Optimizer', 'Scheduler']

# (0, 1]: a share that may be all, never none (kernel-FLOPs budgets)
LeftOpenUnitInterval = restricted_number_type('LeftOpenUnitInterval', float, [('>', 0), ('<=', 1)])
# >= 2: kept checkpoints (a save may be half-written), repeats of a t-test
AtLeastTwo = restricted_number_type('AtLeastTwo', int, ('>=', 2))
Optimizer = Literal['sgd', 'adam', 'adamw']
Scheduler = Literal['constant', 'plateau', 'one_cycle']
