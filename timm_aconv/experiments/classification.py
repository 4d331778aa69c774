"""The image-classification recipe: config, model, data, training, plots

``recipes/train_classification.py`` only parses a :class:`ClassificationConfig` and calls
:func:`train_classification`; the same function runs each repeat of the paper's comparison
(:mod:`timm_aconv.experiments.compare`).

Models are any timm name: ``aconv_simple_cnn`` / ``conv_simple_cnn`` (the paper's simple CNN,
``kernel_size`` kwarg, its dense layer sized from the data's ``img_size``),
``aconv_resnet20`` / ``conv_resnet20`` (…110), or any other timm model; ``convert=True`` turns
that model's convolutions into adaptive ones with :func:`timm_aconv.convert_convs`
(``sizes=[kernel_size or 7]``, ``include=convert_include``, ``exclude=convert_exclude``).
``model_kwargs`` reach ``timm.create_model`` (the paper configs set the Keras constants of the
authors' networks there).

``batch_size`` is the global batch over all processes (:mod:`~timm_aconv.engine.loaders`).
Datasets without an official split draw theirs from ``split_seed``, by default the run's seed
(:func:`data_split_seed`). ``train_subset`` (the low-data setting) trains on a stratified subset of
the training split drawn with the same seed (on an official split: ``split_seed``, null meaning 0, so
every arm and repeat of a comparison trains on the same images); validation stays the whole split.

The final and the best model are saved in timm's own layout (:func:`timm.models.save_for_hf`:
``config.json`` with the architecture, its arguments and the preprocessing, and
``model.safetensors``), in ``output_dir`` and ``output_dir/best``, so timm rebuilds them with
``timm.create_model('local-dir:<output_dir>/best', pretrained=True)``, a ``--convert``ed model too
(its ``config.json`` names ``aconv_converted`` with the base model and the conversion as arguments).

A setting the model cannot take (``kernel_size`` for a model without that argument, a layer
``convert_convs`` cannot convert) is a :class:`~timm_aconv.engine.config.ConfigError` saying which
key to change.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple

import timm
import torch.nn as nn
from jsonargparse.typing import ClosedUnitInterval, PositiveInt, restricted_number_type
from safetensors.torch import load_file

from ..engine.callbacks import Callback, SigmaRecorder
from ..engine.config import ConfigError
from ..engine.loaders import build_loaders
from ..engine.metrics import ClassificationMetric
from ..engine.trainer import Trainer, set_seed
from ..models import converted_model_args
from ..surgery import convert_convs
from .datasets import RESPLIT_DATASETS, ArrayDataset, DataInfo, build_classification_data
from .task_config import TaskConfig

__all__ = [
    'ClassificationConfig',
    'build_data',
    'classifier_kwargs',
    'create_classifier',
    'data_split_seed',
    'timm_model_saver',
    'train_classification',
]

# the simple CNN's pooling needs at least 4 × 4 pixels
ImageSide = restricted_number_type('ImageSide', int, ('>=', 4))
# [0, 1): the augmentation's largest shift, a share of the side
RightOpenUnitInterval = restricted_number_type('RightOpenUnitInterval', float, [('>=', 0), ('<', 1)])


@dataclass
class ClassificationConfig(TaskConfig):
    """Train a timm image classifier (plain, adaptive, or converted) with the paper's protocol."""

    model: str = 'aconv_simple_cnn'
    """timm model name: aconv_*/conv_* twins (aconv_simple_cnn, aconv_resnet20, ...) or any timm model"""
    kernel_size: Optional[int] = None
    """kernel size n of the k×k convolutions, odd >= 3; null keeps the model default"""
    sigma_init: Optional[Tuple[float, float]] = None
    """initial sigma of the adaptive filters: LOW,HIGH spaced over the filters; null keeps the model default"""
    drop_rate: Optional[ClosedUnitInterval] = None
    """dropout rate of the model (timm drop_rate); null keeps the model default"""
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    """further keyword arguments of timm.create_model, e.g. {drop_path_rate: 0.1}"""
    convert: bool = False
    """make the model's convolutions adaptive (timm_aconv.convert_convs, n = kernel_size or 7)"""
    convert_include: Optional[List[str]] = None
    """with convert: convert only layers matching these module-name patterns (fnmatch)"""
    convert_exclude: Optional[List[str]] = None
    """with convert: leave layers matching these module-name patterns (fnmatch) ordinary"""
    dataset: Literal['digits', 'synthetic', 'mnist', 'fashion_mnist', 'cifar10', 'mnist_cluttered', 'lfw'] = 'digits'
    """dataset name; digits and synthetic need no download"""
    img_size: Optional[ImageSide] = None
    """resize images to img_size × img_size pixels (>= 4); null keeps the native size"""
    augment: bool = False
    """the paper's training augmentation: shifts and flips"""
    augment_shift: RightOpenUnitInterval = 0.2
    """largest shift of the augmentation, a fraction of the side (edges replicated, Keras' nearest)"""
    input_norm: Literal['none', 'pixel_mean', 'standardize'] = 'none'
    """input preprocessing from the training split: none, pixel_mean (minus its per-pixel mean), standardize"""
    split_seed: Optional[int] = None
    """seed of the train/validation split (digits, synthetic, lfw), of generated data and of train_subset;
    null: the run's seed, a new split per repeat (train_subset of an official split: 0)"""
    train_subset: Optional[PositiveInt] = None
    """train on a stratified subset of this many training images, drawn with split_seed (the low-data
    setting; validation stays whole); null: all"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model not in timm.list_models():
            raise ConfigError(
                f'model {self.model!r} is not a timm model; e.g. aconv_simple_cnn, conv_simple_cnn, '
                f'aconv_resnet20, conv_resnet20, or any name of timm.list_models()'
            )


def classifier_kwargs(config: ClassificationConfig, info: DataInfo) -> Dict[str, Any]:
    """The ``timm.create_model`` keyword arguments of ``config.model`` for the dataset ``info`` describes."""
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
    return kwargs


def create_classifier(config: ClassificationConfig, info: DataInfo) -> nn.Module:
    """The timm model of ``config`` for the dataset described by ``info``.

    Its ``pretrained_cfg`` describes the recipe's input (``info``'s size and channels, pixels in
    [0, 1]: mean 0, std 1), which :func:`timm.models.save_for_hf` writes to ``config.json``.
    """
    kwargs = classifier_kwargs(config, info)
    try:
        model = timm.create_model(config.model, pretrained=False, **kwargs)
    except TypeError as error:
        raise _unexpected_argument_error(config, kwargs, error) from error
    if config.convert:
        try:
            convert_convs(
                model,
                sizes=[config.kernel_size or 7],
                include=config.convert_include,
                exclude=config.convert_exclude,
                sigma_init=config.sigma_init,
            )
        except ValueError as error:
            raise _conversion_error(config, error) from error
    preprocessing = dict(
        input_size=(info.in_chans, *info.img_size),
        mean=(0.0,) * info.in_chans,
        std=(1.0,) * info.in_chans,
        crop_pct=1.0,
        interpolation='bilinear',
    )
    if tuple(model.pretrained_cfg.get('input_size', ())) != preprocessing['input_size']:
        preprocessing['pool_size'] = None  # the default cfg's feature-map size is for its own input size
    model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, **preprocessing}
    return model


def _unexpected_argument_error(config: ClassificationConfig, kwargs: Dict[str, Any], error: TypeError) -> Exception:
    """A ConfigError naming the config key whose value the model does not accept (``error`` itself
    when it is not about an unexpected keyword argument)."""
    match = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    if match is None or match.group(1) not in kwargs:
        return error
    key = match.group(1)
    if key in config.model_kwargs:
        return ConfigError(f'model {config.model!r} does not take {key!r}: remove it from model_kwargs')
    if key == 'img_size':  # set for the simple CNNs only
        return error
    advice = ' or add --convert to make its convolutions adaptive' if key in ('kernel_size', 'sigma_init') else ''
    return ConfigError(
        f'model {config.model!r} does not take {key}={getattr(config, key)!r}: drop {key} from the '
        f'config (--{key} null on the command line){advice}'
    )


def _conversion_error(config: ClassificationConfig, error: ValueError) -> ConfigError:
    """convert_convs' error with its Python advice (``exclude=['stem.0']``) as the recipe's options."""
    message = str(error).replace('convert_convs: ', '')
    message = re.sub(r"\s*\(?exclude=\['([^']+)'\]\)?", r' with --convert_exclude \1', message)
    message = message.replace('got sizes value', 'got kernel_size').replace(
        'preserve=True needs sizes', 'needs kernel_size'
    )
    layer = re.search(r"layer '([^']+)'", message)
    if layer is not None:
        message = message.replace(
            ' (or pass preserve=False)', f', or keep it ordinary with --convert_exclude {layer.group(1)}'
        )
    return ConfigError(
        f'--convert of {config.model!r}: {message} (--convert_include / --convert_exclude take '
        f'comma-separated module-name patterns, e.g. --convert_exclude "stem.*,head.*")'
    )


def data_split_seed(config: ClassificationConfig) -> int:
    """The seed that draws the train/validation split of a dataset without an official one
    (:data:`~timm_aconv.experiments.datasets.RESPLIT_DATASETS`): ``split_seed``, or the run's ``seed``
    when it is null, so that each repeat of Algorithm 1 gets its own split, as in the authors'
    code. It also draws the ``train_subset``. Official splits ignore it (0) unless ``train_subset``
    is set: then ``split_seed`` (null: 0), the same subset for every arm and repeat."""
    if config.dataset not in RESPLIT_DATASETS:
        return 0 if config.train_subset is None or config.split_seed is None else config.split_seed
    return config.seed if config.split_seed is None else config.split_seed


def build_data(config: ClassificationConfig) -> Tuple[ArrayDataset, ArrayDataset, DataInfo]:
    """``(train, validation, info)`` of ``config``'s dataset with its split seed, normalization and augmentation."""
    return build_classification_data(
        config.dataset,
        config.data_dir,
        config.download,
        config.img_size,
        config.augment,
        split_seed=data_split_seed(config),
        input_norm=config.input_norm,
        augment_shift=config.augment_shift,
        train_subset=config.train_subset,
    )


def _export_metadata(config: ClassificationConfig, info: DataInfo) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``model_args`` (what ``create_model`` needs to rebuild the architecture; dropout left out, as timm
    does) and the extra ``config.json`` fields (``timm_aconv_convert`` for a converted model)."""
    model_args = {name: value for name, value in classifier_kwargs(config, info).items() if name != 'drop_rate'}
    model_config: Dict[str, Any] = {}
    if config.convert:
        # timm's loader rebuilds it as aconv_converted: the base model, then the same conversion
        model_args.update(
            converted_model_args(
                config.model,
                [config.kernel_size or 7],
                include=config.convert_include,
                exclude=config.convert_exclude,
                sigma_init=None if config.sigma_init is None else list(config.sigma_init),
            )
        )
        model_config['pretrained_cfg'] = dict(architecture='aconv_converted')
    return model_args, model_config


def timm_model_saver(config: ClassificationConfig, info: DataInfo) -> Callable[[nn.Module, Path], None]:
    """``save(model, directory)``: ``model`` in timm's ``save_for_hf`` layout, rebuildable with
    ``timm.create_model('local-dir:<directory>', pretrained=True)``."""
    model_args, model_config = _export_metadata(config, info)

    def save(model: nn.Module, directory: Path) -> None:
        timm.models.save_for_hf(
            model, str(directory), model_config=dict(model_config), model_args=dict(model_args), safe_serialization=True
        )

    return save


def train_classification(
    config: ClassificationConfig,
    callbacks: Sequence[Callback] = (),
    end_training: bool = True,
) -> List[Dict[str, float]]:
    """Trains ``config.model`` on ``config.dataset``; returns the per-epoch history.

    ``end_training=False`` keeps the distributed process group for further runs in the same
    process (see :meth:`~timm_aconv.engine.trainer.Trainer.fit`).

    Writes ``config.yaml``, ``metrics.csv``/``metrics.json``, ``sigmas.json``, checkpoints, the
    final model (``config.json`` + ``model.safetensors``, timm's layout) to ``config.output_dir``,
    the best one by ``monitor`` to ``output_dir/best``, and with ``plots=True`` the learning
    curves and per-layer sigma histograms as PNG. With ``push_to_hub`` the best model is then
    pushed to that Hub repository with :func:`timm.models.push_to_hf_hub`.
    """
    set_seed(config.seed)
    train_set, val_set, info = build_data(config)
    model = create_classifier(config, info)
    train_loader, val_loader = build_loaders(
        train_set, val_set, config.batch_size, config.val_batch_size, config.num_workers, config.cpu
    )
    recorder = SigmaRecorder()
    trainer = Trainer(
        model,
        train_loader,
        val_loader,
        config,
        loss_fn=nn.CrossEntropyLoss(),
        metric=ClassificationMetric(),
        callbacks=[recorder, *callbacks],
        save_model_fn=timm_model_saver(config, info),
    )
    history = trainer.fit(end_training=end_training)
    if config.push_to_hub and trainer.is_main_process:
        _push_best(trainer, config, info)
    if config.plots and trainer.is_main_process:
        from .training_plots import plot_learning_curves, plot_sigma_histograms

        plot_learning_curves(history, config.output_dir)
        if recorder.epochs:
            plot_sigma_histograms(recorder.epochs, config.output_dir)
    return history


def _push_best(trainer: Trainer, config: ClassificationConfig, info: DataInfo) -> None:
    """The best model (the final one without ``save_best``) to the Hub, with timm's own push function."""
    model = trainer.unwrapped_model
    if config.save_best:
        model.load_state_dict(load_file(str(trainer.best_dir / 'model.safetensors')))
    model_args, model_config = _export_metadata(config, info)
    timm.models.push_to_hf_hub(
        model,
        config.push_to_hub,
        model_config=model_config,
        model_args=model_args,
        safe_serialization=True,
        commit_message=f'{config.model} trained on {config.dataset} with timm-aconv',
    )
