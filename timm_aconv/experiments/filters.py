"""Learning image filters with one adaptive layer (the paper's autoencoder experiment)

Paper section 4.1 and Figure 4: a single linear convolution layer with 9 filters of 9×9 takes
one grayscale image and learns to output 9 filtered versions of it — 3×3 Laplace, horizontal
and vertical Sobel, Gaussians of three widths, and the Laplace and Sobel of the widest
Gaussian — trained by SGD (lr 0.1, momentum 0.9, gradient clip by value 1.0) on the MSE. The
adaptive layer (ACONV) and an ordinary 9×9 layer (CONV) are fitted from the same seed and
their final MSE compared.

    >>> result = run_learn_filters(LearnFiltersConfig(iterations=200))
    >>> {name: fit.final_mse for name, fit in result.fits.items()}

The targets follow the authors' ``test_filters.py`` (scikit-image's ``laplace(ksize=3)``,
``sobel_h``/``sobel_v`` with their 1/4 normalization, ``gaussian``), computed with
scipy.ndimage and zero borders, which is what the layer's zero padding can reproduce.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, get_args

import numpy as np
import torch
import torch.nn as nn
from jsonargparse.typing import NonNegativeFloat, OpenUnitInterval, PositiveFloat, PositiveInt
from scipy import ndimage

from ..engine.config import check_fields, config_to_dict, save_config
from ..layers.adaptive_conv import AdaptiveConv2d
from ..layers.sigma import param_groups, register_sigma_clamp
from .kernel_plots import layer_kernel_rows, new_figure, plot_kernel_row, plot_sigma_trajectories

__all__ = [
    'FILTER_NAMES',
    'LAYER_KINDS',
    'SAMPLE_IMAGES',
    'WEIGHT_INITS',
    'FilterFit',
    'LearnFiltersConfig',
    'LearnFiltersResult',
    'build_filter_layer',
    'filter_targets',
    'fit_filters',
    'load_sample_gray',
    'plot_learned_filters',
    'run_learn_filters',
    'save_learn_filters',
]

LAPLACE_3x3 = np.array([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
SOBEL_H = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]) / 4.0  # responds to horizontal edges
SOBEL_V = SOBEL_H.T
GAUSS_SIGMAS = (0.25, 1.0, 2.0)  # in pixels; the last one is smoothed further by Laplace / Sobel

FILTER_NAMES = (
    'Laplace 3×3',
    'Sobel h',
    'Sobel v',
    'Gauss σ=0.25',
    'Gauss σ=1',
    'Gauss σ=2',
    'Laplace∘Gauss σ=2',
    'Sobel h∘Gauss σ=2',
    'Sobel v∘Gauss σ=2',
)
LAYER_KINDS = ('aconv', 'conv')
WeightInit = Literal['he_uniform', 'glorot_uniform', 'torch']
WEIGHT_INITS = get_args(WeightInit)
SAMPLE_IMAGES = ('china.jpg', 'flower.jpg')


@dataclass
class LearnFiltersConfig:
    """Learn 9 image filters with one 9×9 adaptive layer and one ordinary 9×9 layer (paper section 4.1).

    Defaults are the authors' code; recipes/configs/learn_filters.yaml says where the paper differs.
    """

    output_dir: str = 'runs/learn_filters'
    """folder for results.json and the figure"""
    image: Literal['china.jpg', 'flower.jpg'] = 'china.jpg'
    """the scikit-learn sample image to filter"""
    image_size: PositiveInt = 96
    """the image's centre square is resized to image_size × image_size pixels"""
    kernel_size: int = 9
    """n of both n×n layers, odd >= 3"""
    iterations: PositiveInt = 2500
    """full-batch SGD iterations per layer"""
    lr: PositiveFloat = 0.1
    """SGD learning rate"""
    momentum: NonNegativeFloat = 0.9
    """SGD momentum"""
    clip_value: Optional[PositiveFloat] = 1.0
    """clip every gradient (sigma too) into [-v, v] (Keras clipvalue); null: no clipping"""
    l2: NonNegativeFloat = 1e-3
    """Keras-style L2 penalty on W (SGD weight decay 2·l2)"""
    sigma_init: PositiveFloat = 0.25
    """initial sigma of every adaptive filter"""
    sigma_bounds: Optional[Tuple[float, float]] = None
    """LOW,HIGH range sigma is clamped into after every step; null: the paper's [1/n, n]"""
    train_crop_tol: Optional[OpenUnitInterval] = None
    """train the adaptive layer at the smallest window holding all but this share of its envelope energy;
    null: the full grid (the paper)"""
    aconv_weight_init: WeightInit = 'he_uniform'
    """initialisation of the adaptive layer's W (he_uniform: the authors' code)"""
    conv_weight_init: WeightInit = 'glorot_uniform'
    """initialisation of the ordinary layer's W (glorot_uniform: Keras' default)"""
    seed: int = 9
    """random seed of both layers' initialisation"""
    num_threads: Optional[PositiveInt] = 1
    """torch CPU threads (the MSE values depend on the thread count); null: torch's default"""
    plots: bool = True
    """write the figure learn_filters.png"""
    overwrite: bool = False
    """write into an output_dir that already holds results, replacing them"""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class FilterFit:
    """One fitted layer: the MSE before every update, sigma after every update, the result."""

    kind: str
    layer: nn.Conv2d
    mse_history: List[float]
    sigma_history: Optional[torch.Tensor]  # (iterations + 1, filters); None for CONV
    prediction: torch.Tensor  # (filters, H, W)
    final_mse: float  # after the last update

    @property
    def best_mse(self) -> float:
        """The lowest MSE seen before any update (the curve can spike when a sigma hits its bound)."""
        return min([*self.mse_history, self.final_mse])


@dataclass
class LearnFiltersResult:
    image: torch.Tensor  # (H, W)
    targets: torch.Tensor  # (filters, H, W)
    fits: Dict[str, FilterFit]


def load_sample_gray(name: str = 'china.jpg', size: int = 128) -> torch.Tensor:
    """A scikit-learn sample image as grayscale in [0, 1], centre square crop resized to size×size."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    if name not in SAMPLE_IMAGES:
        raise ValueError(f'image must be a scikit-learn sample image, one of {SAMPLE_IMAGES}, got {name!r}')
    if size < 1:
        raise ValueError(f'size must be >= 1 pixel, got {size}')
    pixels = load_sample_image(name)
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(pixels[top : top + side, left : left + side]).convert('L')
    resized = square.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)


def filter_targets(image: torch.Tensor) -> torch.Tensor:
    """The 9 filtered versions of a (H, W) image, shape (9, H, W), in :data:`FILTER_NAMES` order."""
    if image.ndim != 2:
        raise ValueError(f'image must be a 2-d (H, W) tensor, got shape {tuple(image.shape)}')
    pixels = image.double().numpy()

    def correlate(array: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        return ndimage.correlate(array, kernel, mode='constant', cval=0.0)

    def gauss(array: np.ndarray, sigma: float) -> np.ndarray:
        return ndimage.gaussian_filter(array, sigma, mode='constant', cval=0.0)

    widest = gauss(pixels, GAUSS_SIGMAS[-1])
    targets = [
        correlate(pixels, LAPLACE_3x3),
        correlate(pixels, SOBEL_H),
        correlate(pixels, SOBEL_V),
        *(gauss(pixels, sigma) for sigma in GAUSS_SIGMAS),
        correlate(widest, LAPLACE_3x3),
        correlate(widest, SOBEL_H),
        correlate(widest, SOBEL_V),
    ]
    return torch.from_numpy(np.stack(targets)).float()


def _init_weight_(weight: torch.Tensor, init: str) -> None:
    receptive = weight[0, 0].numel()
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    if init == 'he_uniform':
        bound = math.sqrt(6.0 / fan_in)
    elif init == 'glorot_uniform':
        bound = math.sqrt(6.0 / (fan_in + fan_out))
    else:
        return  # 'torch': keep nn.Conv2d's default
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def build_filter_layer(kind: str, filters: int, config: LearnFiltersConfig) -> nn.Conv2d:
    """The one-layer linear autoencoder: 1 input channel → ``filters`` maps, n×n, 'same' padding, no bias."""
    if kind not in LAYER_KINDS:
        raise ValueError(f'kind must be one of {LAYER_KINDS}, got {kind!r}')
    common = dict(padding='same', bias=False)
    if kind == 'aconv':
        layer = AdaptiveConv2d(
            1,
            filters,
            config.kernel_size,
            sigma_init=config.sigma_init,
            sigma_bounds=config.sigma_bounds,
            train_crop_tol=config.train_crop_tol,
            **common,
        )
    else:
        layer = nn.Conv2d(1, filters, config.kernel_size, **common)
    _init_weight_(layer.weight, config.aconv_weight_init if kind == 'aconv' else config.conv_weight_init)
    return layer


def fit_filters(layer: nn.Conv2d, image: torch.Tensor, targets: torch.Tensor, config: LearnFiltersConfig) -> FilterFit:
    """Fit ``layer`` so that ``layer(image) ≈ targets`` by full-batch SGD on the MSE.

    The L2 penalty of the authors' Keras code (``l2(λ)`` on W) is SGD weight decay ``2λ`` on W
    only (:func:`timm_aconv.param_groups`); sigma is clamped into its bounds after every step
    (:func:`timm_aconv.register_sigma_clamp`); gradients are clipped by value first.
    """
    kind = 'aconv' if isinstance(layer, AdaptiveConv2d) else 'conv'
    inputs, targets = image[None, None], targets[None]
    optimizer = torch.optim.SGD(param_groups(layer, weight_decay=2 * config.l2), lr=config.lr, momentum=config.momentum)
    register_sigma_clamp(optimizer, layer)
    sigma_history = [layer.sigma.detach().clone()] if kind == 'aconv' else None
    mse_history = []
    for _ in range(config.iterations):
        loss = nn.functional.mse_loss(layer(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_value is not None:
            nn.utils.clip_grad_value_(layer.parameters(), config.clip_value)
        optimizer.step()
        mse_history.append(loss.item())
        if sigma_history is not None:
            sigma_history.append(layer.sigma.detach().clone())
    with torch.no_grad():
        prediction = layer(inputs)[0]
        final_mse = float(nn.functional.mse_loss(prediction, targets[0]))
    return FilterFit(
        kind=kind,
        layer=layer,
        mse_history=mse_history,
        sigma_history=torch.stack(sigma_history) if sigma_history is not None else None,
        prediction=prediction,
        final_mse=final_mse,
    )


def run_learn_filters(config: LearnFiltersConfig, kinds: Tuple[str, ...] = LAYER_KINDS) -> LearnFiltersResult:
    """Fit ACONV and CONV layers (same seed, same image and targets) and return both fits
    (with ``config.num_threads`` torch threads when set)."""
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    image = load_sample_gray(config.image, config.image_size)
    targets = filter_targets(image)
    fits = {}
    for kind in kinds:
        torch.manual_seed(config.seed)
        layer = build_filter_layer(kind, targets.shape[0], config)
        fits[kind] = fit_filters(layer, image, targets, config)
    return LearnFiltersResult(image=image, targets=targets, fits=fits)


def plot_learned_filters(result: LearnFiltersResult, max_iterations_shown: Optional[int] = None):
    """The paper's Figure 4 in one figure.

    Rows: input and targets; the predictions of each fit; for ACONV its envelopes U and product
    kernels W ∘ U; the CONV kernels; then the MSE curves of both fits and ACONV's sigma
    trajectories. Returns the matplotlib figure.
    """
    filters = result.targets.shape[0]
    aconv, conv = result.fits.get('aconv'), result.fits.get('conv')
    image_rows = [('target', result.targets)] + [
        (f'{fit.kind.upper()} output', fit.prediction) for fit in result.fits.values()
    ]
    kernel_rows = []
    if aconv is not None:
        rows = layer_kernel_rows(aconv.layer)
        kernel_rows += [('ACONV U', rows['U']), ('ACONV W ∘ U', rows['W ∘ U'])]
    if conv is not None:
        kernel_rows.append(('CONV W', layer_kernel_rows(conv.layer)['W']))
    total_rows = len(image_rows) + len(kernel_rows) + 2  # + two rows for the curves
    figure, axes = new_figure(total_rows, filters + 1, cell_size=1.3)
    plot_kernel_row(axes[0, :1], result.image[None], 'input')
    for row, (label, maps) in enumerate(image_rows):
        if row > 0:
            axes[row, 0].set_axis_off()
        # composite names on two lines: one line is wider than its column and is cut off at the edge
        titles = [name.replace('∘', '∘\n') for name in FILTER_NAMES] if row == 0 else None
        plot_kernel_row(axes[row, 1:], maps, label, titles)
    for offset, (label, kernels) in enumerate(kernel_rows):
        row = len(image_rows) + offset
        axes[row, 0].set_axis_off()
        plot_kernel_row(axes[row, 1:], kernels, label)
    curve_row = len(image_rows) + len(kernel_rows)
    gridspec = axes[curve_row, 0].get_gridspec()
    for axis in axes[curve_row:].flat:
        axis.remove()
    loss_axis = figure.add_subplot(gridspec[curve_row:, : (filters + 1) // 2])
    for fit in result.fits.values():
        history = fit.mse_history[:max_iterations_shown]
        loss_axis.semilogy(history, label=f'{fit.kind.upper()} (final {fit.final_mse:.2e})')
    loss_axis.set_xlabel('iteration')
    loss_axis.set_ylabel('MSE')
    loss_axis.grid(True, alpha=0.3)
    loss_axis.legend(fontsize=7)
    if aconv is not None:
        sigma_axis = figure.add_subplot(gridspec[curve_row:, (filters + 1) // 2 + 1 :])
        history = aconv.sigma_history[: None if max_iterations_shown is None else max_iterations_shown + 1]
        plot_sigma_trajectories(sigma_axis, history, FILTER_NAMES)
    figure.tight_layout()
    return figure


def save_learn_filters(result: LearnFiltersResult, config: LearnFiltersConfig) -> Dict[str, Dict[str, object]]:
    """Writes ``results.json`` (MSE of each fit, final sigmas, the config), ``config.yaml`` (rerun with
    ``--config``) and, with ``config.plots``, the figure ``learn_filters.png`` to ``config.output_dir``;
    returns the results."""
    directory = Path(config.output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    summary = {}
    for kind, fit in result.fits.items():
        summary[kind] = dict(final_mse=fit.final_mse, best_mse=fit.best_mse, mse_history=fit.mse_history)
        if fit.sigma_history is not None:
            summary[kind]['final_sigma'] = dict(zip(FILTER_NAMES, fit.sigma_history[-1].tolist()))
    (directory / 'results.json').write_text(json.dumps(dict(config=config_to_dict(config), fits=summary), indent=1))
    save_config(config, config.output_dir)
    if config.plots:
        plot_learned_filters(result).savefig(directory / 'learn_filters.png', dpi=100)
    return summary
