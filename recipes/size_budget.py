"""Kernel-size budgets: accuracy vs deployed latency and kernel FLOPs, against ACONV and CONV.

The recipe is :mod:`timm_aconv.recipes.size_budget` (its --help and docstring say how to run it); this file
runs it from a clone, ``python recipes/size_budget.py ...``, as ``python -m timm_aconv.recipes.size_budget ...``
does from an installed package.
"""

from timm_aconv.engine import run_cli
from timm_aconv.recipes.size_budget import main

if __name__ == '__main__':
    run_cli(main)
