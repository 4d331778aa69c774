"""Train a timm image classifier with adaptive (or ordinary) convolutions.

The recipe is :mod:`timm_aconv.recipes.train_classification` (its --help and docstring say how to run
it); this file runs it from a clone, ``python recipes/train_classification.py ...``, as
``python -m timm_aconv.recipes.train_classification ...`` does from an installed package.
"""

from timm_aconv.engine import run_cli
from timm_aconv.recipes.train_classification import main

if __name__ == '__main__':
    run_cli(main)
