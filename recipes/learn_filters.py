"""Learn 9 image filters with one adaptive and one ordinary 9×9 layer (paper section 4.1).

The recipe is :mod:`timm_aconv.recipes.learn_filters` (its --help and docstring say how to run it); this file
runs it from a clone, ``python recipes/learn_filters.py ...``, as ``python -m timm_aconv.recipes.learn_filters ...``
does from an installed package.
"""

from timm_aconv.engine import run_cli
from timm_aconv.recipes.learn_filters import main

if __name__ == '__main__':
    run_cli(main)
