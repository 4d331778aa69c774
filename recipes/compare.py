"""The paper's Algorithm 1: CONV vs ACONV for each kernel size, N seeds each, t-test table.

The recipe is :mod:`timm_aconv.recipes.compare` (its --help and docstring say how to run it); this file
runs it from a clone, ``python recipes/compare.py ...``, as ``python -m timm_aconv.recipes.compare ...``
does from an installed package.
"""

from timm_aconv.engine import run_cli
from timm_aconv.recipes.compare import main

if __name__ == '__main__':
    run_cli(main)
