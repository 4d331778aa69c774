""" The image-classification recipe: config, model, data, training, plots

``recipes/train_classification.py`` only parses a :class:`ClassificationConfig` and calls
:func:`train_classification`; the same function runs each repeat of the paper's comparison
(:mod:`timm_aconv.train.compare`).

Models are any timm name: ``aconv_simple_cnn`` / ``conv_simple_cnn`` (the paper's simple CNN,
``kernel_size`` kwarg, its dense layer sized from the data's ``img_size``),
``aconv_resnet20`` / ``conv_resnet20`` (…110), or any other timm model; ``convert=True`` turns
that model's convolutions into adaptive ones with :func:`timm_aconv.convert_convs`
(``sizes=[kernel_size or 7]``, ``include=convert_include``, ``exclude=convert_exclude``).
A setting the model cannot take (``kernel_size`` for a model without that argument, a layer
``convert_convs`` cannot convert) is a :class:`~timm_aconv.train.config.ConfigError` saying which
key to change.
"""
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import timm
import torch.nn as nn
from torch.utils.data import DataLoader

from ..surgery import convert_convs
from .callbacks import Callback, SigmaRecorder
from .config import ConfigError
from .datasets import DataInfo, build_classification_data
from .engine import EngineConfig, Trainer, set_seed
from .metrics import ClassificationMetric

__all__ = ['ClassificationConfig', 'create_classifier', 'train_classification']


@dataclass
class ClassificationConfig(EngineConfig):
    """ Train a timm image classifier (plain, adaptive, or converted) with the paper's protocol. """
    model: str = 'aconv_simple_cnn'
    kernel_size: Optional[int] = None
    sigma_init: Optional[Tuple[float, float]] = None
    drop_rate: Optional[float] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    convert: bool = False
    convert_include: Optional[List[str]] = None
    convert_exclude: Optional[List[str]] = None
    dataset: Literal['digits', 'synthetic', 'mnist', 'fashion_mnist', 'cifar10', 'mnist_cluttered', 'lfw'] = 'digits'
    data_dir: str = 'data'
    download: bool = True
    img_size: Optional[int] = None
    augment: bool = False
    split_seed: int = 0
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
    try:
        model = timm.create_model(config.model, pretrained=False, **kwargs)
    except TypeError as error:
        raise _unexpected_argument_error(config, kwargs, error) from error
    if config.convert:
        try:
            convert_convs(model, sizes=[config.kernel_size or 7], include=config.convert_include,
                          exclude=config.convert_exclude, sigma_init=config.sigma_init)
        except ValueError as error:
            raise _conversion_error(config, error) from error
    return model


def _unexpected_argument_error(config: ClassificationConfig, kwargs: Dict[str, Any], error: TypeError) -> Exception:
    """ A ConfigError naming the config key whose value the model does not accept (``error`` itself
    when it is not about an unexpected keyword argument). """
    match = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    if match is None or match.group(1) not in kwargs:
        return error
    key = match.group(1)
    if key in config.model_kwargs:
        return ConfigError(f'model {config.model!r} does not take {key!r}: remove it from model_kwargs')
    if key == 'img_size':  # set for the simple CNNs only
        return error
    advice = ' or add --convert to make its convolutions adaptive' if key in ('kernel_size', 'sigma_init') else ''
    return ConfigError(f'model {config.model!r} does not take {key}={getattr(config, key)!r}: drop {key} from the '
                       f'config (--{key} null on the command line){advice}')


def _conversion_error(config: ClassificationConfig, error: ValueError) -> ConfigError:
    """ convert_convs' error with its Python advice (``exclude=['stem.0']``) as the recipe's options. """
    message = str(error).replace('convert_convs: ', '')
    message = re.sub(r"\s*\(?exclude=\['([^']+)'\]\)?", r' with --convert_exclude \1', message)
    message = message.replace('got sizes value', 'got kernel_size').replace('preserve=True needs sizes', 'needs kernel_size')
    layer = re.search(r"layer '([^']+)'", message)
    if layer is not None:
        message = message.replace(' (or pass preserve=False)', f', or keep it ordinary with --convert_exclude {layer.group(1)}')
    return ConfigError(f'--convert of {config.model!r}: {message} (--convert_include / --convert_exclude take '
                       f'comma-separated module-name patterns, e.g. --convert_exclude "stem.*,head.*")')


def _loaders(config: ClassificationConfig, train_set, val_set) -> Tuple[DataLoader, DataLoader]:
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                              num_workers=config.num_workers, drop_last=False)
    val_loader = DataLoader(val_set, batch_size=config.val_batch_size or config.batch_size, shuffle=False,
                            num_workers=config.num_workers)
    return train_loader, val_loader


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
    train_set, val_set, info = build_classification_data(
        config.dataset, config.data_dir, config.download, config.img_size, config.augment, config.split_seed)
    model = create_classifier(config, info)
    train_loader, val_loader = _loaders(config, train_set, val_set)
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
