"""The segmentation recipe's task: config, U-Net variants, one training run (paper section 4.4)

The paper replaced the first convolution of a U-Net by a 7×7 adaptive layer and compared it with
ordinary 7×7 and 3×3 first convolutions on the Oxford-IIIT Pet trimaps (128×128; pet, background,
border), Adam lr 0.01, batch 64, 75 epochs, 5 repeats; the score is the peak validation pixel
accuracy. ``recipes/train_segmentation.py`` parses a :class:`SegmentationConfig` and calls
:func:`~timm_aconv.experiments.segmentation_compare.train_segmentation`, which trains every ``variant``
(``aconv7``, ``conv7``, ``conv3``, …) ``repeats`` times through :func:`train_variant` and the
shared :class:`~timm_aconv.engine.trainer.Trainer`.

Models (``arch``): ``paper_unet``, the paper's Xception-style U-Net
(``smp.create_model('aconv_paper_unet', ...)``), or ``smp_unet``, SMP's U-Net with
``encoder_name`` (``smp.create_model('aconv_unet', ...)``: ``adaptive='first'`` for the adaptive
variants, ``adaptive=None, first_conv_kernel_size=n`` for the ordinary ones).
Data: :mod:`timm_aconv.experiments.segmentation_data`.

Each run saves its final model and its best by ``monitor`` (``best/``) with SMP's
``save_pretrained`` (:class:`SmpModelSaver`: ``config.json``, ``model.safetensors`` and a model
card ``README.md`` with the saved epoch's validation metrics and the dataset), so
``smp.from_pretrained(path)`` rebuilds them once ``timm_aconv`` is imported. With
``push_to_hub`` (one run only) the best model then goes to that Hub repository with SMP's own
``push_to_hub``.
"""

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import torch.nn as nn
from accelerate import PartialState
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, OpenUnitInterval, PositiveFloat, PositiveInt

from ..engine.callbacks import Callback, SigmaRecorder
from ..engine.config import ConfigError
from ..engine.config_types import Optimizer, Scheduler
from ..engine.history import read_history
from ..engine.loaders import build_loaders
from ..engine.metrics import SegmentationMetric
from ..engine.trainer import Trainer, set_seed
from .segmentation_data import TRIMAP_CLASSES
from .task_config import TaskConfig

__all__ = [
    'SegmentationConfig',
    'SmpModelSaver',
    'create_segmentation_model',
    'parse_variant',
    'train_variant',
    'variant_config',
]

VARIANT_PATTERN = re.compile(r'^(aconv|conv)([1-9][0-9]*)$')


@dataclass
class SegmentationConfig(TaskConfig):
    """Train U-Nets with adaptive / ordinary first convolutions on trimap segmentation (paper 4.4).

    Defaults are the paper's (Adam 0.01, batch 64, 75 epochs, reduce-on-plateau ×0.2 / 10 epochs,
    gradient clip by value 1.0) on the offline shapes data; recipes/configs/ has the runs.
    """

    output_dir: str = 'runs/segmentation'
    arch: Literal['paper_unet', 'smp_unet'] = 'paper_unet'
    """U-Net: the paper's Xception-style U-Net or SMP's U-Net with encoder_name"""
    encoder_name: str = 'resnet18'
    """SMP encoder of arch smp_unet (e.g. resnet18, resnet34)"""
    variants: List[str] = field(default_factory=lambda: ['aconv7', 'conv7', 'conv3'])
    """first convolutions to compare: aconv<n> (adaptive n×n) or conv<n> (ordinary), n odd"""
    repeats: PositiveInt = 1
    """training runs per variant (seeds seed, seed + 1, ...)"""
    sigma_init: Tuple[float, float] = (0.1, 0.25)
    """initial sigma of the adaptive filters: LOW,HIGH spaced over the filters"""
    sigma_bounds: Tuple[float, float] = (1 / 7, 5.0)
    """LOW,HIGH range sigma is clamped into after every step"""
    dataset: Literal['shapes', 'oxford_pets'] = 'shapes'
    """dataset: the generated shapes (offline) or the Oxford-IIIT Pet trimaps"""
    img_size: PositiveInt = 128
    """resize images to img_size × img_size pixels, a multiple of 16 (U-Net down-sampling)"""
    augment: bool = True
    """the paper's training augmentation"""
    shapes_train_size: PositiveInt = 512
    """training images of the generated shapes dataset"""
    shapes_val_size: PositiveInt = 128
    """validation images of the generated shapes dataset"""
    val_protocol: Literal['full', 'authors'] = 'full'
    """validation: full (the whole test split) or authors (the first 704 test images, bilinearly resized
    masks, how the paper's 86.21% / 85.54% were measured)"""
    examples: NonNegativeInt = 3
    """validation images drawn in examples.png (0: no figure)"""
    # the paper's training settings (fields of EngineConfig with new defaults)
    epochs: PositiveInt = 75
    optimizer: Optimizer = 'adam'
    lr: PositiveFloat = 0.01
    scheduler: Scheduler = 'plateau'
    plateau_factor: OpenUnitInterval = 0.2
    plateau_patience: NonNegativeInt = 10
    plateau_cooldown: NonNegativeInt = 0
    min_lr: NonNegativeFloat = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.variants:
            raise ConfigError("variants must list at least one first convolution, e.g. ['aconv7', 'conv7', 'conv3']")
        for variant in self.variants:
            parse_variant(variant)
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f'variants must not repeat, got {self.variants}')
        if self.img_size % 16:
            raise ConfigError(f'img_size must be a multiple of 16 (U-Net down-sampling), got {self.img_size}')
        if self.push_to_hub and len(self.variants) * self.repeats > 1:
            raise ConfigError(
                f'push_to_hub pushes the model of one training run (a Hub repository holds one model), but '
                f'variants={self.variants} x repeats={self.repeats} are {len(self.variants) * self.repeats} runs: '
                f'set one variant and repeats 1, or push a run yourself with '
                f'smp.from_pretrained(<run>/best).push_to_hub'
            )


def parse_variant(variant: str) -> Tuple[bool, int]:
    """``'aconv7'`` → (adaptive, 7); ``'conv3'`` → (ordinary, 3); a ConfigError otherwise."""
    match = VARIANT_PATTERN.match(str(variant))
    if match is None or int(match.group(2)) % 2 == 0:
        raise ConfigError(
            f"variants entries must be 'aconv<n>' or 'conv<n>' with an odd kernel size n (e.g. aconv7, conv7, conv3), "
            f'got {variant!r}'
        )
    return match.group(1) == 'aconv', int(match.group(2))


def first_conv(model: nn.Module) -> Tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` (adaptive ones included) of ``model`` and its name."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f'{type(model).__name__} has no convolution')


def create_segmentation_model(config: SegmentationConfig, variant: str) -> nn.Module:
    """The U-Net of ``config.arch`` with the first convolution ``variant`` (e.g. 'aconv7', 'conv3')."""
    import segmentation_models_pytorch as smp

    adaptive, size = parse_variant(variant)
    classes = len(TRIMAP_CLASSES)
    sigma = dict(sigma_init=tuple(config.sigma_init), sigma_bounds=tuple(config.sigma_bounds))
    if config.arch == 'paper_unet':
        return smp.create_model(
            'aconv_paper_unet',
            encoder_weights=None,
            classes=classes,
            entry_kernel_size=size,
            adaptive=adaptive,
            **sigma,
        )
    common = dict(encoder_name=config.encoder_name, encoder_weights=None, classes=classes)
    if adaptive:
        return smp.create_model('aconv_unet', adaptive_kernel_size=size, adaptive='first', **common, **sigma)
    # the CONV baselines: SMP's U-Net, its first convolution resized when the encoder's has another size
    return smp.create_model('aconv_unet', adaptive=None, first_conv_kernel_size=size, **common)


def variant_config(config: SegmentationConfig, variant: str, repeat: int) -> SegmentationConfig:
    """The settings of one run: ``variant`` alone, seed ``seed + repeat``, its own ``output_dir``."""
    seed = config.seed + repeat
    return dataclasses.replace(
        config, seed=seed, output_dir=str(Path(config.output_dir) / variant / f'seed{seed}'), variants=[variant]
    )


def _finished(run: SegmentationConfig) -> Optional[List[Dict[str, float]]]:
    try:
        history = read_history(run.output_dir)
    except FileNotFoundError:
        return None
    finished = len(history) == run.epochs and (Path(run.output_dir) / 'model.safetensors').is_file()
    return history if finished else None


def _load_weights(model: nn.Module, directory: str) -> nn.Module:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(Path(directory) / 'model.safetensors')))
    return model


def _model_card(run: SegmentationConfig, record: Dict[str, float]) -> Dict[str, Any]:
    """SMP's model card fields: the validation metrics of the epoch in ``record`` and the dataset."""
    metrics = {key: value for key, value in record.items() if key == 'epoch' or key.startswith('val_')}
    dataset = (
        f'{run.dataset} (trimaps: {", ".join(TRIMAP_CLASSES)}; {run.img_size}×{run.img_size}; '
        f'validation protocol {run.val_protocol!r})'
    )
    return dict(metrics=metrics, dataset=dataset)


class SmpModelSaver(Callback):
    """The :class:`~timm_aconv.engine.trainer.Trainer`'s ``save_model_fn`` for SMP models.

    ``saver(model, directory)`` writes ``model.save_pretrained(directory, metrics=..., dataset=...)``
    with the validation metrics of the epoch being saved (the trainer's last record: the final
    epoch, or the new best one). Pass it as a callback too, which hands it the trainer.
    """

    def __init__(self, run: SegmentationConfig) -> None:
        self.run = run
        self.trainer: Optional[Trainer] = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def __call__(self, model: nn.Module, directory: Path) -> None:
        if self.trainer is None:
            raise RuntimeError(
                'SmpModelSaver saves with the metrics of the trainer it was given as a callback: '
                'pass it both as save_model_fn and in callbacks'
            )
        model.save_pretrained(str(directory), **_model_card(self.run, self.trainer.history[-1]))


def _push_best(run: SegmentationConfig, history: List[Dict[str, float]]) -> None:
    """The run's best model (its final one without ``save_best``) to ``push_to_hub``, reloaded the way users
    reload it and pushed with SMP's own ``push_to_hub`` (model card included)."""
    import segmentation_models_pytorch as smp

    directory = Path(run.output_dir)
    record = history[-1]
    if run.save_best:
        epoch = json.loads((directory / 'best' / 'best.json').read_text())['epoch']
        directory, record = directory / 'best', history[epoch - 1]
    model = smp.from_pretrained(str(directory))
    model.push_to_hub(
        run.push_to_hub,
        model_card_kwargs=_model_card(run, record),
        commit_message=f'{type(model).__name__} ({run.variants[0]}) trained on {run.dataset} with timm-aconv',
    )


def train_variant(run: SegmentationConfig, variant: str, train_set, val_set, callbacks: Sequence[Callback]):
    """One training run (or, with ``resume``, a finished one read back): (history, trained model).

    With ``run.push_to_hub`` the best model is pushed afterwards (from the main process).
    """
    set_seed(run.seed)
    model = create_segmentation_model(run, variant)
    history = _finished(run) if run.resume else None
    if history is not None:
        model = _load_weights(model, run.output_dir)
    else:
        train_loader, val_loader = build_loaders(
            train_set, val_set, run.batch_size, run.val_batch_size, run.num_workers, run.cpu
        )
        saver = SmpModelSaver(run)
        trainer = Trainer(
            model,
            train_loader,
            val_loader,
            run,
            loss_fn=nn.CrossEntropyLoss(),
            metric=SegmentationMetric(len(TRIMAP_CLASSES), TRIMAP_CLASSES),
            callbacks=[SigmaRecorder(), saver, *callbacks],
            save_model_fn=saver,
        )
        history = trainer.fit(end_training=False)  # keep the process group for the next run
        model = trainer.unwrapped_model
    if run.push_to_hub and PartialState().is_main_process:
        _push_best(run, history)
    return history, model
