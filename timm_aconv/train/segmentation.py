""" The segmentation recipe: Oxford-IIIT Pet trimaps with an adaptive first convolution (paper 4.4)

The paper replaced the first convolution of a U-Net by a 7×7 adaptive layer and compared it with
ordinary 7×7 and 3×3 first convolutions on the Oxford-IIIT Pet trimaps (128×128; pet, background,
border), Adam lr 0.01, batch 64, 75 epochs, 5 repeats; the score is the peak validation pixel
accuracy. ``recipes/train_segmentation.py`` parses a :class:`SegmentationConfig` and calls
:func:`train_segmentation`, which trains every ``variant`` (``aconv7``, ``conv7``, ``conv3``, …)
``repeats`` times with the shared :class:`~timm_aconv.train.engine.Trainer`, then writes the
comparison table, the mean curves, the entry-conv kernels and the Figure 7 style examples.

Models (``arch``): ``paper_unet``, the paper's Xception-style U-Net
(``smp.create_model('aconv_paper_unet', ...)``), or ``smp_unet``, SMP's U-Net with
``encoder_name`` (``smp.create_model('aconv_unet', ...)`` for the adaptive variants).

Data (``dataset``): ``oxford_pets`` (torchvision ``OxfordIIITPet``, trainval 3680 / test 3669,
trimap labels 1/2/3 → 0/1/2), or ``shapes``, generated offline (an ellipse "pet" with a border
band on a gradient background with a distractor rectangle; for smoke runs and tests). Joint
image/mask transforms with Albumentations; images scaled to [-2, 2] as in the authors' code.
"""
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import albumentations as A
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from torch.utils.data import DataLoader, Dataset

from ..layers import adaptive_layers
from ..surgery.module_tree import replace_modules
from .callbacks import Callback, SigmaRecorder
from .config import ConfigError
from .datasets import DatasetNotFoundError, dataset_not_found
from .engine import EngineConfig, Trainer, set_seed
from .history import read_history
from .metrics import Metric
from .statistics import describe_peaks, ttest_peaks

__all__ = [
    'SEGMENTATION_DATASETS', 'TRIMAP_CLASSES', 'SegmentationConfig', 'SegmentationMetric', 'SegmentationDataset',
    'SegmentationResult', 'shapes_sample', 'build_segmentation_transform', 'build_segmentation_data',
    'parse_variant', 'create_segmentation_model', 'plot_segmentation_examples', 'train_segmentation',
    'DatasetNotFoundError']

SEGMENTATION_DATASETS = ('shapes', 'oxford_pets')
TRIMAP_CLASSES = ('pet', 'background', 'border')  # the trimap's 1, 2, 3 minus one
VARIANT_PATTERN = re.compile(r'^(aconv|conv)([1-9][0-9]*)$')
# the authors' scaling: pixel / 255 * 4 - 2, i.e. (pixel / 255 - 0.5) / 0.25
IMAGE_MEAN, IMAGE_STD = 0.5, 0.25


@dataclass
class SegmentationConfig(EngineConfig):
    """ Train U-Nets with adaptive / ordinary first convolutions on trimap segmentation (paper 4.4).

    Defaults are the paper's (Adam 0.01, batch 64, 75 epochs, reduce-on-plateau ×0.2 / 10 epochs,
    gradient clip by value 1.0) on the offline ``shapes`` data; ``recipes/configs/`` has the runs.
    """
    output_dir: str = 'runs/segmentation'
    arch: Literal['paper_unet', 'smp_unet'] = 'paper_unet'
    encoder_name: str = 'resnet18'
    variants: List[str] = field(default_factory=lambda: ['aconv7', 'conv7', 'conv3'])
    repeats: int = 1
    sigma_init: Tuple[float, float] = (0.1, 0.25)
    sigma_bounds: Tuple[float, float] = (1 / 7, 5.0)
    dataset: Literal['shapes', 'oxford_pets'] = 'shapes'
    data_dir: str = 'data'
    download: bool = True
    img_size: int = 128
    augment: bool = True
    shapes_train_size: int = 512
    shapes_val_size: int = 128
    batch_size: int = 64
    val_batch_size: Optional[int] = None
    num_workers: int = 0
    examples: int = 3
    plots: bool = True
    # the paper's training settings (fields of EngineConfig with new defaults)
    epochs: int = 75
    optimizer: Literal['sgd', 'adam', 'adamw'] = 'adam'
    lr: float = 0.01
    scheduler: Literal['constant', 'plateau', 'one_cycle'] = 'plateau'
    plateau_factor: float = 0.2
    plateau_patience: int = 10
    plateau_cooldown: int = 0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.variants:
            raise ConfigError("variants must list at least one first convolution, e.g. ['aconv7', 'conv7', 'conv3']")
        for variant in self.variants:
            parse_variant(variant)
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f'variants must not repeat, got {self.variants}')
        for name in ('repeats', 'batch_size', 'shapes_train_size', 'shapes_val_size'):
            if getattr(self, name) < 1:
                raise ConfigError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise ConfigError(f'val_batch_size must be >= 1 or null, got {self.val_batch_size}')
        if self.img_size < 16 or self.img_size % 16:
            raise ConfigError(f'img_size must be a multiple of 16 (U-Net down-sampling), got {self.img_size}')
        if self.examples < 0 or self.num_workers < 0:
            raise ConfigError(f'examples and num_workers must be >= 0, got {self.examples}, {self.num_workers}')


def parse_variant(variant: str) -> Tuple[bool, int]:
    """ ``'aconv7'`` → (adaptive, 7); ``'conv3'`` → (ordinary, 3); a ConfigError otherwise. """
    match = VARIANT_PATTERN.match(str(variant))
    if match is None or int(match.group(2)) % 2 == 0:
        raise ConfigError(
            f"variants entries must be 'aconv<n>' or 'conv<n>' with an odd kernel size n (e.g. aconv7, conv7, conv3), "
            f"got {variant!r}")
    return match.group(1) == 'aconv', int(match.group(2))


# ---- metric

class SegmentationMetric(Metric):
    """ Pixel accuracy, mean IoU over classes, per-class IoU and mean cross-entropy per image.

    ``per_sample`` returns one confusion matrix per image (rows: true class, columns: predicted),
    so the engine's ``gather_for_metrics`` counts every validation image exactly once.
    """

    def __init__(self, num_classes: int = len(TRIMAP_CLASSES), class_names: Sequence[str] = TRIMAP_CLASSES) -> None:
        if len(class_names) != num_classes:
            raise ValueError(f'class_names must name the {num_classes} classes, got {list(class_names)}')
        self.num_classes, self.class_names = num_classes, tuple(class_names)
        self.reset()

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        classes = self.num_classes
        index = (targets.long() * classes + outputs.argmax(1)).flatten(1)  # (B, H*W)
        counts = torch.zeros(index.shape[0], classes * classes, device=index.device)
        counts.scatter_add_(1, index, torch.ones_like(index, dtype=counts.dtype))
        loss = F.cross_entropy(outputs.float(), targets.long(), reduction='none').flatten(1).mean(1)
        return counts.view(-1, classes, classes), loss

    def update(self, counts: torch.Tensor, loss: torch.Tensor) -> None:
        self.confusion += counts.sum(0).double().cpu()
        self.loss_sum += float(loss.sum())
        self.images += loss.numel()

    def compute(self) -> Dict[str, float]:
        if self.images == 0:
            raise RuntimeError('SegmentationMetric.compute() before any update: the validation set is empty')
        true_positive = self.confusion.diag()
        union = self.confusion.sum(0) + self.confusion.sum(1) - true_positive
        iou = true_positive / union.clamp(min=1)
        values = dict(pixel_accuracy=float(true_positive.sum() / self.confusion.sum()), miou=float(iou.mean()),
                      loss=self.loss_sum / self.images)
        values.update({f'iou_{name}': float(value) for name, value in zip(self.class_names, iou)})
        return values

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)
        self.loss_sum, self.images = 0.0, 0


# ---- data

def shapes_sample(index: int, size: int = 128, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """ One offline trimap sample: (image (size, size, 3) uint8, labels (size, size) uint8 in 0..2).

    An ellipse "pet" (class 0, striped texture) with a border band (class 2, like the trimaps'
    uncertain region) on a colour-gradient background (class 1) that holds a distractor
    rectangle; noise on top. Deterministic in (``seed``, ``index``).
    """
    rng = np.random.default_rng([seed, index])
    rows, cols = (np.mgrid[0:size, 0:size] + 0.5) / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * cols + np.sin(angle) * rows
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-8)
    start, end = rng.uniform(0, 255, size=(2, 3))
    image = start + (end - start) * ramp[..., None]
    top, left = rng.uniform(0.0, 0.7, size=2)
    height, width = rng.uniform(0.15, 0.3, size=2)
    image[(rows > top) & (rows < top + height) & (cols > left) & (cols < left + width)] = rng.uniform(0, 255, 3)
    centre = rng.uniform(0.3, 0.7, size=2)
    axes = rng.uniform(0.12, 0.3, size=2)
    tilt = rng.uniform(0, np.pi)
    along = (cols - centre[1]) * np.cos(tilt) + (rows - centre[0]) * np.sin(tilt)
    across = -(cols - centre[1]) * np.sin(tilt) + (rows - centre[0]) * np.cos(tilt)
    radius = np.sqrt((along / axes[0]) ** 2 + (across / axes[1]) ** 2)  # 1 on the ellipse
    distance = (radius - 1.0) * axes.min() * size  # ≈ signed distance to the outline in pixels
    pet = radius < 1.0
    stripes = 0.5 + 0.5 * np.sin(along * size / rng.uniform(2, 5))
    colour = rng.uniform(0, 255, 3)
    image[pet] = (colour * (0.6 + 0.4 * stripes[..., None]))[pet]
    image += rng.normal(0, 12, image.shape)
    labels = np.ones((size, size), dtype=np.uint8)
    labels[pet] = 0
    labels[np.abs(distance) < max(1.0, size / 64)] = 2
    return np.clip(image, 0, 255).astype(np.uint8), labels


class _ShapesSource:
    def __init__(self, length: int, size: int, seed: int) -> None:
        self.length, self.size, self.seed = length, size, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return shapes_sample(index, self.size, self.seed)


class _PetTrimapSource:
    """ torchvision's OxfordIIITPet as (RGB uint8, trimap labels 0..2) numpy pairs. """

    def __init__(self, pets) -> None:
        self.pets = pets

    def __len__(self) -> int:
        return len(self.pets)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        image, trimap = self.pets[index]
        return np.asarray(image.convert('RGB')), np.asarray(trimap, dtype=np.uint8) - 1


class SegmentationDataset(Dataset):
    """ (image, labels) numpy pairs → (float (3, H, W) in [-2, 2], long (H, W)) with a joint transform. """

    def __init__(self, source, transform: A.Compose) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, labels = self.source[index]
        # torch's RNG (seeded per run and per worker, saved in checkpoints) drives the augmentation
        self.transform.set_random_seed(int(torch.randint(2 ** 31 - 1, ())))
        result = self.transform(image=image, mask=labels)
        image = torch.from_numpy(np.ascontiguousarray(result['image'].transpose(2, 0, 1)))
        return image, torch.from_numpy(result['mask'].astype(np.int64))


def build_segmentation_transform(img_size: int, augment: bool) -> A.Compose:
    """ Resize (masks nearest), the authors' augmentation, scaling to [-2, 2].

    The authors' augmentation (one coin for both): with probability 0.5 flip left-right and
    shift the brightness by up to ±0.2 of the range.
    """
    steps = [A.Resize(img_size, img_size)]
    if augment:
        steps.append(A.Sequential([
            A.HorizontalFlip(p=1.0),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.0, p=1.0)], p=0.5))
    steps.append(A.Normalize(mean=IMAGE_MEAN, std=IMAGE_STD, max_pixel_value=255.0))
    return A.Compose(steps, seed=0)


def _oxford_pets(root: Path, split: str, download: bool) -> _PetTrimapSource:
    from torchvision.datasets import OxfordIIITPet
    try:
        pets = OxfordIIITPet(str(root), split=split, target_types='segmentation', download=download)
    except Exception as error:  # RuntimeError when missing, URLError / OSError when the download fails
        how = ('Download images.tar.gz and annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/ '
               f'and extract both into {str(root / "oxford-iiit-pet")!r} (it must hold images/ and '
               'annotations/trimaps/), or run torchvision.datasets.OxfordIIITPet(root, download=True) where there '
               'is internet and copy the folder.')
        raise dataset_not_found('oxford_pets', root, how, error) from error
    return _PetTrimapSource(pets)


def build_segmentation_data(config: SegmentationConfig) -> Tuple[SegmentationDataset, SegmentationDataset]:
    """ Training and validation sets of ``config.dataset`` (validation: the paper's test split). """
    train_transform = build_segmentation_transform(config.img_size, config.augment)
    val_transform = build_segmentation_transform(config.img_size, False)
    if config.dataset == 'shapes':
        train = _ShapesSource(config.shapes_train_size, config.img_size, seed=config.seed)
        val = _ShapesSource(config.shapes_val_size, config.img_size, seed=config.seed + 10_000)
    elif config.dataset == 'oxford_pets':
        root = Path(config.data_dir)
        train, val = _oxford_pets(root, 'trainval', config.download), _oxford_pets(root, 'test', config.download)
    else:
        raise ConfigError(f'dataset must be one of {SEGMENTATION_DATASETS}, got {config.dataset!r}')
    return SegmentationDataset(train, train_transform), SegmentationDataset(val, val_transform)


# ---- models

def _first_conv(model: nn.Module) -> Tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f'{type(model).__name__} has no convolution')


def create_segmentation_model(config: SegmentationConfig, variant: str) -> nn.Module:
    """ The U-Net of ``config.arch`` with the first convolution ``variant`` (e.g. 'aconv7', 'conv3'). """
    import segmentation_models_pytorch as smp
    adaptive, size = parse_variant(variant)
    classes = len(TRIMAP_CLASSES)
    sigma = dict(sigma_init=tuple(config.sigma_init), sigma_bounds=tuple(config.sigma_bounds))
    if config.arch == 'paper_unet':
        return smp.create_model('aconv_paper_unet', encoder_weights=None, classes=classes, entry_kernel_size=size,
                                adaptive=adaptive, **sigma)
    if adaptive:
        return smp.create_model('aconv_unet', encoder_name=config.encoder_name, encoder_weights=None,
                                classes=classes, adaptive_kernel_size=size, adaptive='first', **sigma)
    model = smp.create_model('unet', encoder_name=config.encoder_name, encoder_weights=None, classes=classes)
    _, conv = _first_conv(model.encoder)
    if conv.kernel_size != (size, size):  # the CONV 3×3 baseline: same stride, 'same'-style padding
        resized = nn.Conv2d(conv.in_channels, conv.out_channels, size, stride=conv.stride, padding=size // 2,
                            bias=conv.bias is not None)
        replace_modules(model, {conv: resized})
    return model


# ---- figures

def _trimap_colormap():
    from matplotlib.colors import ListedColormap
    return ListedColormap(['#d9822b', '#2e4a7d', '#f5f5f5'])  # pet, background, border


def plot_segmentation_examples(images: torch.Tensor, masks: torch.Tensor, predictions: Dict[str, torch.Tensor]):
    """ The paper's Figure 7c-q: per row an input, its true mask and each model's predicted mask.

    Args:
        images: (N, 3, H, W) network inputs scaled to [-2, 2].
        masks: (N, H, W) true labels.
        predictions: {model label: (N, H, W) predicted labels}.

    Returns:
        The matplotlib figure.
    """
    from .kernel_plots import new_figure
    count = images.shape[0]
    for label, predicted in predictions.items():
        if predicted.shape != masks.shape:
            raise ValueError(f'predictions[{label!r}] must have the masks\' shape {tuple(masks.shape)}, '
                             f'got {tuple(predicted.shape)}')
    figure, axes = new_figure(count, 2 + len(predictions), cell_size=2.0)
    colormap = _trimap_colormap()
    shown = (images.detach().float().cpu() * IMAGE_STD + IMAGE_MEAN).clamp(0, 1).permute(0, 2, 3, 1)
    titles = ['input', 'true mask', *predictions]
    for row in range(count):
        panels = [masks[row], *(predicted[row] for predicted in predictions.values())]
        axes[row, 0].imshow(shown[row].numpy())
        for column, panel in enumerate(panels, start=1):
            axes[row, column].imshow(panel.detach().cpu().numpy(), cmap=colormap, vmin=0, vmax=2,
                                     interpolation='nearest')
        for column, axis in enumerate(axes[row]):
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=9)
    figure.tight_layout()
    return figure


# ---- training

@dataclass
class SegmentationResult:
    """ Per variant: the histories of its repeats and their peak validation pixel accuracy / mIoU. """
    histories: Dict[str, List[List[Dict[str, float]]]]
    peak_accuracy: Dict[str, List[float]]
    peak_miou: Dict[str, List[float]]
    rows: List[Dict[str, float]]
    markdown: str


def _run_config(config: SegmentationConfig, variant: str, repeat: int) -> SegmentationConfig:
    seed = config.seed + repeat
    return dataclasses.replace(
        config, seed=seed, output_dir=str(Path(config.output_dir) / variant / f'seed{seed}'), variants=[variant])


def _loaders(config: SegmentationConfig, train_set: Dataset, val_set: Dataset) -> Tuple[DataLoader, DataLoader]:
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers)
    val_loader = DataLoader(val_set, batch_size=config.val_batch_size or config.batch_size, shuffle=False,
                            num_workers=config.num_workers)
    return train_loader, val_loader


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


def _train_run(run: SegmentationConfig, variant: str, train_set, val_set, callbacks: Sequence[Callback]):
    """ One training run (or, with ``resume``, a finished one read back): (history, trained model). """
    set_seed(run.seed)
    model = create_segmentation_model(run, variant)
    history = _finished(run) if run.resume else None
    if history is not None:
        return history, _load_weights(model, run.output_dir)
    train_loader, val_loader = _loaders(run, train_set, val_set)
    trainer = Trainer(model, train_loader, val_loader, run, loss_fn=nn.CrossEntropyLoss(),
                      metric=SegmentationMetric(), callbacks=[SigmaRecorder(), *callbacks])
    history = trainer.fit(end_training=False)  # keep the process group for the next run
    return history, trainer.unwrapped_model


def _summary_rows(peak_accuracy: Dict[str, List[float]], peak_miou: Dict[str, List[float]]) -> List[Dict[str, float]]:
    """ Mean, std, max per variant; a two-tailed t-test of the first adaptive variant against each
    other variant when both have >= 2 repeats (else t, p None). """
    reference = next((variant for variant in peak_accuracy if parse_variant(variant)[0]), None)
    rows = []
    for variant, peaks in peak_accuracy.items():
        accuracy, miou = describe_peaks(peaks), describe_peaks(peak_miou[variant])
        row = dict(variant=variant, repeats=accuracy['repeats'], accuracy_mean=accuracy['mean'],
                   accuracy_std=accuracy['std'], accuracy_max=accuracy['max'],
                   miou_mean=miou['mean'], miou_max=miou['max'], t=None, p=None)
        if reference is not None and variant != reference:
            row['t'], row['p'] = ttest_peaks(peak_accuracy[reference], peaks)
        rows.append(row)
    return rows


def _markdown(rows: List[Dict[str, float]], title: str) -> str:
    lines = [f'### {title}', '',
             '| first conv | repeats | peak pixel acc. mean±std (%) | max (%) | peak mIoU mean (%) | t | p |',
             '|---|---|---|---|---|---|---|']
    for row in rows:
        adaptive, size = parse_variant(row['variant'])
        name = f"{'ACONV' if adaptive else 'CONV'} {size}×{size}"
        test = '| – | – |' if row['t'] is None else f"| {row['t']:.2f} | {row['p']:.3g} |"
        lines.append(f"| {name} | {row['repeats']} | {100 * row['accuracy_mean']:.2f}±{100 * row['accuracy_std']:.2f} "
                     f"| {100 * row['accuracy_max']:.2f} | {100 * row['miou_mean']:.2f} {test}")
    lines += ['', 'Peak validation pixel accuracy over epochs per run; t, p: two-tailed Student t-test of the '
              'adaptive variant against each other one (needs repeats >= 2).']
    return '\n'.join(lines)


def _write_figures(config: SegmentationConfig, histories, models, val_set) -> None:
    import matplotlib.pyplot as plt
    from .kernel_plots import plot_layer_kernels
    from .plots import plot_mean_curves
    directory = Path(config.output_dir)
    curves = {variant.upper(): np.asarray([[record['val_pixel_accuracy'] for record in history] for history in runs])
              for variant, runs in histories.items()}
    plot_mean_curves(curves, str(directory / 'comparison_curves.png'), title='validation pixel accuracy')
    for variant, model in models.items():
        layer = next(adaptive_layers(model), None) or _first_conv(model)[1]
        figure = plot_layer_kernels(layer, max_filters=8)
        figure.savefig(directory / f'{variant}_first_conv_kernels.png', dpi=100)
        plt.close(figure)
    if config.examples:
        count = min(config.examples, len(val_set))
        images, masks = (torch.stack(items) for items in zip(*(val_set[index] for index in range(count))))
        predictions = {}
        for variant, model in models.items():
            model.eval()
            with torch.no_grad():
                predictions[variant.upper()] = model(images.to(next(model.parameters()).device)).argmax(1).cpu()
        figure = plot_segmentation_examples(images, masks, predictions)
        figure.savefig(directory / 'examples.png', dpi=100)
        plt.close(figure)


def train_segmentation(config: SegmentationConfig, callbacks: Sequence[Callback] = ()) -> SegmentationResult:
    """ Trains every variant ``repeats`` times (seeds ``seed``, ``seed + 1``, …) and summarizes.

    Each run writes its metrics, ``sigmas.json``, checkpoints and ``model.safetensors`` to
    ``output_dir/<variant>/seed<seed>``; ``output_dir`` gets ``comparison.md``/``.json`` and, with
    ``plots=True``, ``comparison_curves.png``, ``<variant>_first_conv_kernels.png`` and
    ``examples.png`` (the first repeat of each variant). With ``resume=True`` finished runs are read
    back and unfinished ones continue from their checkpoint.
    """
    # the engine's Accelerator reads ACCELERATE_USE_CPU (accelerate launch --cpu) into the shared state
    state = PartialState(cpu=parse_flag_from_env('ACCELERATE_USE_CPU'))
    with state.main_process_first():  # one process downloads, the others then find the files
        train_set, val_set = build_segmentation_data(config)
    histories: Dict[str, List[List[Dict[str, float]]]] = {}
    models: Dict[str, nn.Module] = {}
    for variant in config.variants:
        for repeat in range(config.repeats):
            run = _run_config(config, variant, repeat)
            history, model = _train_run(run, variant, train_set, val_set, callbacks)
            histories.setdefault(variant, []).append(history)
            models.setdefault(variant, model)
            peak = max(record['val_pixel_accuracy'] for record in history)
            if state.is_main_process:
                print(f'{variant} seed={run.seed}: peak validation pixel accuracy {peak:.4f}', flush=True)
    peak_accuracy = {variant: [max(r['val_pixel_accuracy'] for r in history) for history in runs]
                     for variant, runs in histories.items()}
    peak_miou = {variant: [max(r['val_miou'] for r in history) for history in runs]
                 for variant, runs in histories.items()}
    state.destroy_process_group()  # the runs kept it (Trainer.fit(end_training=False)); no-op when single-process
    rows = _summary_rows(peak_accuracy, peak_miou)
    model_name = 'paper U-Net' if config.arch == 'paper_unet' else f'SMP U-Net ({config.encoder_name})'
    markdown = _markdown(rows, f'{model_name} on {config.dataset}, {config.img_size}×{config.img_size}')
    if state.is_main_process:
        directory = Path(config.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / 'comparison.md').write_text(markdown + '\n')
        (directory / 'comparison.json').write_text(json.dumps(
            dict(rows=rows, peak_accuracy=peak_accuracy, peak_miou=peak_miou), indent=1))
        if config.plots:
            _write_figures(config, histories, models, val_set)
    return SegmentationResult(histories, peak_accuracy, peak_miou, rows, markdown)
