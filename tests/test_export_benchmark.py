"""benchmarks/export_sizes.py: its variants and CLI on a tiny layer (the measuring logic is timing.py's)."""

import json

import pytest

from benchmarks import export_sizes

pytestmark = pytest.mark.usefixtures('one_torch_thread')  # main(--threads 1) sets the thread count


def test_cli_compares_the_variants_of_a_mixed_size_layer(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_sizes, 'LAYER_SHAPES', [(2, 8, 8)])
    path = tmp_path / 'export.json'
    results = export_sizes.main(['--suite', 'layer', '--rounds', '1', '--threads', '1', '--json', str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))
    cases = results['cases']
    assert [(case['first'], case['second']) for case in cases] == export_sizes.PAIRS
    assert all(case['ratio'] > 0 for case in cases)
    # half 3x3, a quarter 5x5, a quarter 7x7 by sigma; the export keeps each filter's own size
    assert cases[0]['note'].startswith('A: 3x3:4 5x5:2 7x7:2 (1 bucketed layers, 1 gather); B: 7x7:8;')
    assert '| layer | 2x8x8x8 | bucketed | single |' in capsys.readouterr().out
