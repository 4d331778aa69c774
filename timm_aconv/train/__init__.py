""" Training: one Accelerate engine shared by every recipe, configs, metrics, recipes' logic

- :mod:`~timm_aconv.train.engine`: :class:`Trainer`, :class:`EngineConfig` (start here).
- :mod:`~timm_aconv.train.config`: YAML + command-line configs with validation.
- :mod:`~timm_aconv.train.metrics`: the :class:`Metric` contract, classification and segmentation metrics.
- :mod:`~timm_aconv.train.schedulers`: constant, reduce-on-plateau, the paper's one-cycle.
- :mod:`~timm_aconv.train.callbacks`: hooks, :class:`SigmaRecorder`.
- :mod:`~timm_aconv.train.datasets`: the paper's classification datasets and offline ones.
- :mod:`~timm_aconv.train.loaders`: DataLoaders whose ``batch_size`` is the global batch.
- :mod:`~timm_aconv.train.classification`: the classification recipe's logic.
- :mod:`~timm_aconv.train.compare`: the paper's Algorithm 1 (CONV vs ACONV, t-tests).
- :mod:`~timm_aconv.train.statistics`: peak summaries, t-test, Holm correction, Cohen's d.
- :mod:`~timm_aconv.train.settings`: ``settings.yaml``, the resolved settings of a comparison's runs.
- :mod:`~timm_aconv.train.segmentation_data`, :mod:`~timm_aconv.train.segmentation`,
  :mod:`~timm_aconv.train.segmentation_compare`: the U-Net recipe's data, task and comparison.
- :mod:`~timm_aconv.train.plots`: learning curves, sigma histograms, mean-accuracy bands, trimaps.

Needs the ``train`` extra (``pip install 'timm-aconv[train]'``); importing it without names what is missing.
"""
import importlib.util


def _missing_training_libraries():
    """ The pip packages of the modules below that cannot be imported here. """
    missing = []
    for module, package in _TRAINING_LIBRARIES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(package)
    return missing


# the modules timm_aconv.train imports (module -> its pip package), all in the `train` extra
_TRAINING_LIBRARIES = {
    'accelerate': 'accelerate', 'albumentations': 'albumentations', 'matplotlib': 'matplotlib', 'numpy': 'numpy',
    'PIL': 'pillow', 'yaml': 'pyyaml', 'safetensors': 'safetensors', 'sklearn': 'scikit-learn', 'scipy': 'scipy',
    'torchvision': 'torchvision', 'tqdm': 'tqdm'}
_MISSING = _missing_training_libraries()
if _MISSING:
    raise ImportError(f"timm_aconv.train needs the training libraries, missing here: {', '.join(_MISSING)}; "
                      f"pip install 'timm-aconv[train]'")

from .callbacks import Callback, SigmaRecorder  # noqa: E402
from .config import (  # noqa: E402
    ConfigError, config_from_dict, config_to_dict, load_config, parse_config, parse_values, run_cli, save_config)
from .engine import EngineConfig, Trainer, create_optimizer, latest_checkpoint, set_seed  # noqa: E402
from .history import read_history, write_history  # noqa: E402
from .metrics import ClassificationMetric, Metric, SegmentationMetric  # noqa: E402
from .schedulers import GaussianOneCycleLR, create_scheduler  # noqa: E402
