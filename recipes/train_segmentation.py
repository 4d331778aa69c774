"""Train U-Nets whose first convolution is adaptive 7×7, ordinary 7×7 or ordinary 3×3 (paper 4.4).

The recipe is :mod:`timm_aconv.recipes.train_segmentation` (its --help and docstring say how to run
it); this file runs it from a clone, ``python recipes/train_segmentation.py ...``, as
``python -m timm_aconv.recipes.train_segmentation ...`` does from an installed package.
"""

from timm_aconv.engine import run_cli
from timm_aconv.recipes.train_segmentation import main

if __name__ == '__main__':
    run_cli(main)
