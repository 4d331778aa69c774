"""The package's layering: layers -> surgery -> models/smp -> engine -> experiments -> recipes

A module may import its own layer and the layers below it, never one above (``utils`` sits with the
layers). Checked on the source (every ``import`` and ``from ... import``, at any depth, relative or
absolute), so a lazy import inside a function counts too.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'timm_aconv'
RANKS = {
    'layers': 0,
    'utils': 0,
    'surgery': 1,
    'models': 2,
    'smp': 2,
    'engine': 3,
    'experiments': 4,
    'recipes': 5,
    'demo': 5,
}


def _imported_subpackages(path: Path, package: Path = PACKAGE):
    """``(line, subpackage)`` for every import of ``timm_aconv.<subpackage>`` in ``path``."""
    package_parts = path.relative_to(package.parent).parent.parts
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name.split('.') for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package_parts[: len(package_parts) - node.level + 1])
                stem = base + (node.module.split('.') if node.module else [])
                targets = [stem] if node.module else [[*stem, alias.name] for alias in node.names]
            elif node.module:
                stem = node.module.split('.')
                targets = [[*stem, alias.name] for alias in node.names] if len(stem) == 1 else [stem]
        for target in targets:
            if target[0] == 'timm_aconv' and len(target) > 1 and target[1] in RANKS:
                yield node.lineno, target[1]


def _modules():
    return sorted(path for path in PACKAGE.rglob('*.py') if path.parent != PACKAGE or path.name == 'demo.py')


def _check_layering(path: Path, package: Path = PACKAGE) -> None:
    own = path.stem if path.parent == package else path.relative_to(package).parts[0]
    upward = [
        f'line {line}: timm_aconv.{target}'
        for line, target in _imported_subpackages(path, package)
        if RANKS[target] > RANKS[own]
    ]
    assert not upward, f'{path.relative_to(package)} ({own}) imports a layer above it: {upward}'


@pytest.mark.parametrize('path', _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_upward_imports(path):
    _check_layering(path)


def test_the_checker_sees_relative_lazy_and_absolute_imports(tmp_path):
    """The check fails on an upward import written in any of the three forms, passes a downward one."""
    package = tmp_path / 'timm_aconv'
    (package / 'engine').mkdir(parents=True)
    probe = package / 'engine' / 'probe.py'
    probe.write_text(
        'from ..experiments import datasets\nimport timm_aconv.recipes\nfrom . import trainer\n'
        'from ..layers import AdaptiveConv2d\n'
        'def f():\n    from timm_aconv.experiments.compare import run_comparison\n'
    )
    found = sorted(target for _, target in _imported_subpackages(probe, package))
    assert found == ['engine', 'experiments', 'experiments', 'layers', 'recipes']
    with pytest.raises(
        AssertionError,
        match=r'engine/probe.py \(engine\) imports a layer above it: '
        r"\['line 1: timm_aconv.experiments', 'line 2: timm_aconv.recipes'",
    ):
        _check_layering(probe, package)
    probe.write_text('from ..surgery import convert_convs\nfrom .trainer import Trainer\n')
    _check_layering(probe, package)


def test_every_subpackage_has_a_rank():
    subpackages = {path.name for path in PACKAGE.iterdir() if (path / '__init__.py').is_file()}
    assert subpackages <= set(RANKS), f'give these a place in the layering: {subpackages - set(RANKS)}'
