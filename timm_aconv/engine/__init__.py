"""The training engine: one Accelerate loop shared by every recipe, with its configs, metrics and figures

Task-agnostic: nothing here knows a dataset or a paper experiment (those are :mod:`timm_aconv.experiments`).

- :mod:`~timm_aconv.engine.trainer`: :class:`Trainer`, the loop (start here).
- :mod:`~timm_aconv.engine.engine_config`: :class:`EngineConfig`, its validated settings, and the optimizer.
- :mod:`~timm_aconv.engine.config`: YAML + command-line configs on jsonargparse (types, defaults and help
  from the config dataclasses).
- :mod:`~timm_aconv.engine.adaptive_setup`: what the engine does to adaptive layers (clamp, groups,
  training crop), and its trackers.
- :mod:`~timm_aconv.engine.launch`: launcher checks (``torchrun``, ``accelerate launch``) and the process state.
- :mod:`~timm_aconv.engine.output_dir`: a run's folder, its checkpoints, the refusal to overwrite a run.
- :mod:`~timm_aconv.engine.metrics`: the :class:`Metric` contract, classification and segmentation metrics.
- :mod:`~timm_aconv.engine.schedulers`: constant, reduce-on-plateau, the paper's one-cycle.
- :mod:`~timm_aconv.engine.callbacks`: hooks, :class:`SigmaRecorder`.
- :mod:`~timm_aconv.engine.loaders`: DataLoaders whose ``batch_size`` is the global batch.
- :mod:`~timm_aconv.engine.history`: per-epoch metrics files and the printed line.

A comparison's statistics, its ``settings.yaml`` and the training figures are the paper's protocol, in
:mod:`timm_aconv.experiments` (``statistics``, ``settings``, ``training_plots``).

Needs the ``train`` extra (``pip install 'timm-aconv[train]'``); importing it without names what is missing.
"""

import importlib.util


def _missing_training_libraries():
    """The pip packages of the modules below that cannot be imported here."""
    missing = []
    for module, package in _TRAINING_LIBRARIES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(package)
    return missing


# the modules timm_aconv.engine and timm_aconv.experiments import (module -> its pip package), all in the `train` extra
_TRAINING_LIBRARIES = {
    'accelerate': 'accelerate',
    'albumentations': 'albumentations',
    'docstring_parser': 'docstring-parser',
    'jsonargparse': 'jsonargparse',
    'matplotlib': 'matplotlib',
    'numpy': 'numpy',
    'PIL': 'pillow',
    'yaml': 'pyyaml',
    'safetensors': 'safetensors',
    'sklearn': 'scikit-learn',
    'scipy': 'scipy',
    'torchvision': 'torchvision',
    'tqdm': 'tqdm',
}
_MISSING = _missing_training_libraries()
if _MISSING:
    raise ImportError(
        f'timm_aconv.engine needs the training libraries, missing here: {", ".join(_MISSING)}; '
        f"pip install 'timm-aconv[train]'"
    )

from .callbacks import Callback, SigmaRecorder  # noqa: E402
from .config import (  # noqa: E402
    ConfigError,
    check_fields,
    config_to_dict,
    parse_config,
    run_cli,
    save_config,
)
from .engine_config import EngineConfig, create_optimizer  # noqa: E402
from .history import read_history, write_history  # noqa: E402
from .launch import process_state  # noqa: E402
from .metrics import ClassificationMetric, Metric, SegmentationMetric  # noqa: E402
from .output_dir import check_output_dir, latest_checkpoint  # noqa: E402
from .schedulers import GaussianOneCycleLR, create_scheduler  # noqa: E402
from .trainer import Trainer, set_seed  # noqa: E402

__all__ = [
    'Callback',
    'ClassificationMetric',
    'ConfigError',
    'EngineConfig',
    'GaussianOneCycleLR',
    'Metric',
    'SegmentationMetric',
    'SigmaRecorder',
    'Trainer',
    'check_fields',
    'check_output_dir',
    'config_to_dict',
    'create_optimizer',
    'create_scheduler',
    'latest_checkpoint',
    'parse_config',
    'process_state',
    'read_history',
    'run_cli',
    'save_config',
    'set_seed',
    'write_history',
]
