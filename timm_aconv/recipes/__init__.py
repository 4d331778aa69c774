"""The recipes: the paper's experiments and the training entry points, runnable from an installed package

    python -m timm_aconv.recipes.train_classification --config digits
    python -m timm_aconv.recipes.compare --config simple_cnn_mnist
    accelerate launch -m timm_aconv.recipes.train_classification --config resnet_cifar10

Each module is one thin script over the engine and the experiments (:mod:`timm_aconv.engine`): a
``main(argv)`` that parses its settings, checks the output folder and runs. Their YAML configs ship in
``configs/`` (the repository's ``recipes/configs`` links here); ``--config`` takes a path or the name
of a shipped config (:data:`CONFIG_DIR`). The repository's ``recipes/*.py`` run the same ``main``.
"""

from pathlib import Path

from ..engine.config import register_config_dir

__all__ = ['CONFIG_DIR', 'RECIPES']

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'
RECIPES = ('train_classification', 'compare', 'train_segmentation', 'learn_filters', 'size_budget')

register_config_dir(CONFIG_DIR)
