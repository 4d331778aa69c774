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
"""
from .callbacks import Callback, SigmaRecorder
from .config import ConfigError, config_from_dict, config_to_dict, load_config, parse_config, parse_values, run_cli
from .engine import EngineConfig, Trainer, create_optimizer, set_seed
from .history import read_history, write_history
from .metrics import ClassificationMetric, Metric, SegmentationMetric
from .schedulers import GaussianOneCycleLR, create_scheduler
