""" The benchmark's measuring logic (not its speeds): exact ratios from a fake clock, and the CLI. """
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import overhead  # noqa: E402
import timing  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_torch_thread')  # main(--threads 1) sets the thread count


class FakeClock:
    """ A clock that only moves when the timed callables say so. """

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float):
        def run():
            self.now += seconds
        return run


def test_compare_reports_the_interleaved_ratio(monkeypatch):
    clock = FakeClock()
    monkeypatch.setitem(timing.CLOCKS, 'fake', clock)
    result = timing.compare(clock.work(0.03), clock.work(0.02), rounds=5, memory=False, clock='fake')
    assert result.ratio == pytest.approx(1.5) and (result.ratio_q1, result.ratio_q3) == (pytest.approx(1.5),) * 2
    assert result.adaptive_ms == pytest.approx(30.0) and result.ordinary_ms == pytest.approx(20.0)
    assert result.rounds == 5 and result.calls_per_round == 1
    with pytest.raises(ValueError, match='clock must be one of'):
        timing.compare(clock.work(1), clock.work(1), clock='sundial')


def test_cli_writes_a_table_and_json(tmp_path, capsys):
    path = tmp_path / 'results.json'
    results = overhead.main(['--suite', 'layer', '--rounds', '1', '--threads', '1', '--json', str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))
    cases = results['cases']
    assert len(cases) == len(overhead.LAYER_SHAPES) * len(overhead.LAYER_SIZES) * 3
    assert all(case['suite'] == 'layer' and case['ratio'] > 0 for case in cases)
    assert '| layer | 64x16x32x32 n=3 train fwd |' in capsys.readouterr().out
