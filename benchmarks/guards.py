"""Guards: deterministic counts a suite checks against their targets on every run.

A suite turns its counts into :class:`Guard` s; ``python -m benchmarks.overhead`` prints each (``guard ok: ...``
or ``GUARD FAILED: ...``), saves them with the results and exits non-zero when one failed, so that a run that
adds work per adaptive layer is caught, not only printed.
"""

import dataclasses
from typing import Dict


@dataclasses.dataclass(frozen=True)
class Guard:
    """One count of a suite against its target: it passes while ``count <= target``."""

    name: str  # what was counted, where
    count: float
    target: float

    @property
    def passed(self) -> bool:
        return self.count <= self.target

    def line(self) -> str:
        status = 'guard ok' if self.passed else 'GUARD FAILED'
        return f'{status}: {self.name}: {self.count:g} (target <= {self.target:g})'

    def as_dict(self) -> Dict:
        return dict(**dataclasses.asdict(self), passed=self.passed)
