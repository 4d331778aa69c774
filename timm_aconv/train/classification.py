""" The image-classification recipe: config, model, data, training, plots

``recipes/train_classification.py`` only parses a :class:`ClassificationConfig` and calls
:func:`train_classification`; the same function runs each repeat of the paper's comparison
(:mod:`timm_aconv.train.compare`).

Models are any timm name: ``aconv_simple_cnn`` / ``conv_simple_cnn`` (the paper's simple CNN,
``kernel_size`` kwarg, its dense layer sized from the data's ``img_size``),
``aconv_resnet20`` / ``conv_resnet20`` (…110), or any other timm model; ``convert=True`` turns
that model's convolutions into adaptive ones with :func:`timm_aconv.convert_convs`
(``sizes=[kernel_size or 7]``). ``model_kwargs`` reach ``timm.create_model`` (the paper configs
set the Keras constants of the authors' networks there).

``batch_size`` is the global batch over all processes (:mod:`~timm_aconv.train.loaders`).
Datasets without an official split draw theirs from ``split_seed``, by default the run's seed
(:func:`data_split_seed`).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import timm
import torch.nn as nn

from ..surgery import convert_convs
from .callbacks import Callback, SigmaRecorder
from .config import ConfigError
from .datasets import INPUT_NORMS, RESPLIT_DATASETS, ArrayDataset, DataInfo, build_classification_data
from .engine import EngineConfig, Trainer, set_seed
from .loaders import build_loaders
from .metrics import ClassificationMetric

__all__ = ['ClassificationConfig', 'create_classifier', 'data_split_seed', 'build_data', 'train_classification']


@dataclass
class ClassificationConfig(EngineConfig):
    """ Train a timm image classifier (plain, adaptive, or converted) with the paper's protocol.

    batch_size / val_batch_size: the GLOBAL batch over all processes (with N GPUs each process
    loads batch_size / N; N must divide it). split_seed: the train/validation split of digits,
    synthetic and lfw (null: the run's seed, a new split per seed). input_norm: none, pixel_mean
    (minus the training split's per-pixel mean) or standardize. augment_shift: largest shift of
    the augmentation (fraction of the side; borders replicate the edge, as Keras' 'nearest').
    """
    model: str = 'aconv_simple_cnn'
    kernel_size: Optional[int] = None
    sigma_init: Optional[Tuple[float, float]] = None
    drop_rate: Optional[float] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    convert: bool = False
    dataset: Literal['digits', 'synthetic', 'mnist', 'fashion_mnist', 'cifar10', 'mnist_cluttered', 'lfw'] = 'digits'
    data_dir: str = 'data'
    download: bool = True
    img_size: Optional[int] = None
    augment: bool = False
    augment_shift: float = 0.2
    input_norm: Literal['none', 'pixel_mean', 'standardize'] = 'none'
    split_seed: Optional[int] = None
    batch_size: int = 64
    val_batch_size: Optional[int] = None
    num_workers: int = 0
    plots: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f'model_kwargs must be a mapping of keyword arguments, got {self.model_kwargs!r}')
        if self.model not in timm.list_models():
            raise ConfigError(f'model {self.model!r} is not a timm model; e.g. aconv_simple_cnn, conv_simple_cnn, '
                              f'aconv_resnet20, conv_resnet20, or any name of timm.list_models()')
        for name in ('batch_size', 'val_batch_size'):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.img_size is not None and self.img_size < 4:
            raise ConfigError(f'img_size must be >= 4 pixels or null (native size), got {self.img_size}')
        if not 0.0 <= self.augment_shift < 1.0:
            raise ConfigError(f'augment_shift must be in [0, 1) (a fraction of the image side), got {self.augment_shift}')
        if self.input_norm not in INPUT_NORMS:
            raise ConfigError(f'input_norm must be one of {list(INPUT_NORMS)}, got {self.input_norm!r}')


def create_classifier(config: ClassificationConfig, info: DataInfo) -> nn.Module:
    """ The timm model of ``config`` for the dataset described by ``info``. """
    kwargs: Dict[str, Any] = dict(num_classes=info.num_classes, in_chans=info.in_chans)
    if 'simple_cnn' in config.model:  # its dense layer depends on the input size
        kwargs['img_size'] = info.img_size
    if not config.convert:
        for name in ('kernel_size', 'sigma_init', 'drop_rate'):
            if getattr(config, name) is not None:
                kwargs[name] = getattr(config, name)
    elif config.drop_rate is not None:
        kwargs['drop_rate'] = config.drop_rate
    kwargs.update(config.model_kwargs)
    model = timm.create_model(config.model, pretrained=False, **kwargs)
    if config.convert:
        convert_convs(model, sizes=[config.kernel_size or 7], sigma_init=config.sigma_init)
    return model


def data_split_seed(config: ClassificationConfig) -> int:
    """ The seed that draws the train/validation split of a dataset without an official one
    (:data:`~timm_aconv.train.datasets.RESPLIT_DATASETS`): ``split_seed``, or the run's ``seed``
    when it is null, so that each repeat of Algorithm 1 gets its own split, as in the authors'
    code. Official splits ignore it (0). """
    if config.dataset not in RESPLIT_DATASETS:
        return 0
    return config.seed if config.split_seed is None else config.split_seed


def build_data(config: ClassificationConfig) -> Tuple[ArrayDataset, ArrayDataset, DataInfo]:
    """ ``(train, validation, info)`` of ``config``'s dataset with its split seed, normalization and augmentation. """
    return build_classification_data(
        config.dataset, config.data_dir, config.download, config.img_size, config.augment,
        split_seed=data_split_seed(config), input_norm=config.input_norm, augment_shift=config.augment_shift)


def train_classification(
        config: ClassificationConfig,
        callbacks: Sequence[Callback] = (),
        end_training: bool = True,
) -> List[Dict[str, float]]:
    """ Trains ``config.model`` on ``config.dataset``; returns the per-epoch history.

    ``end_training=False`` keeps the distributed process group for further runs in the same
    process (see :meth:`~timm_aconv.train.engine.Trainer.fit`).

    Writes ``metrics.csv``/``metrics.json``, ``sigmas.json``, checkpoints and the final
    ``model.safetensors`` to ``config.output_dir``, and with ``plots=True`` the learning curves
    and per-layer sigma histograms as PNG.
    """
    set_seed(config.seed)
    train_set, val_set, info = build_data(config)
    model = create_classifier(config, info)
    train_loader, val_loader = build_loaders(train_set, val_set, config.batch_size, config.val_batch_size,
                                             config.num_workers, config.cpu)
    recorder = SigmaRecorder()
    trainer = Trainer(model, train_loader, val_loader, config, loss_fn=nn.CrossEntropyLoss(),
                      metric=ClassificationMetric(), callbacks=[recorder, *callbacks])
    history = trainer.fit(end_training=end_training)
    if config.plots and trainer.is_main_process:
        from .plots import plot_learning_curves, plot_sigma_histograms
        plot_learning_curves(history, config.output_dir)
        if recorder.epochs:
            plot_sigma_histograms(recorder.epochs, config.output_dir)
    return history
