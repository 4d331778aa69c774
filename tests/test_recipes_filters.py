"""The learn-filters recipe (paper section 4.1) and the kernel/envelope figures"""

import json
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import timm_aconv
from timm_aconv.engine import ConfigError, parse_config
from timm_aconv.experiments.filters import (
    FILTER_NAMES,
    SOBEL_H,
    LAPLACE_3x3,
    LearnFiltersConfig,
    build_filter_layer,
    filter_targets,
    fit_filters,
    load_sample_gray,
    run_learn_filters,
)
from timm_aconv.experiments.kernel_plots import (
    layer_kernel_rows,
    new_figure,
    plot_layer_kernels,
    plot_sigma_trajectories,
)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures('one_torch_thread')

CONFIG = str(ROOT / 'recipes' / 'configs' / 'learn_filters.yaml')


def impulse(size: int = 21) -> torch.Tensor:
    image = torch.zeros(size, size)
    image[size // 2, size // 2] = 1.0
    return image


def test_targets_of_an_impulse_are_the_filter_kernels():
    targets = filter_targets(impulse())
    assert targets.shape == (len(FILTER_NAMES), 21, 21)
    centre = slice(9, 12)
    # correlating an impulse gives the kernel rotated by 180°
    torch.testing.assert_close(targets[0, centre, centre], torch.tensor(LAPLACE_3x3[::-1, ::-1].copy()).float())
    torch.testing.assert_close(targets[1, centre, centre], torch.tensor(SOBEL_H[::-1, ::-1].copy()).float())
    torch.testing.assert_close(targets[2], targets[1].T)  # Sobel v is Sobel h transposed
    for index in (3, 4, 5):  # Gaussians keep the mass of the impulse
        assert float(targets[index].sum()) == pytest.approx(1.0, abs=1e-4)
    assert float(targets[5].max()) < float(targets[4].max()) < float(targets[3].max())


def test_a_conv_holding_the_laplace_kernel_reproduces_its_target_exactly():
    """Targets use zero borders, the convention the layer's zero padding can learn."""
    image = load_sample_gray('china.jpg', 24)
    layer = nn.Conv2d(1, 1, 9, padding='same', bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0, 3:6, 3:6] = torch.tensor(LAPLACE_3x3)
        output = layer(image[None, None])[0, 0]
    torch.testing.assert_close(output, filter_targets(image)[0], atol=1e-6, rtol=0)


def test_load_sample_gray_range_shape_and_errors():
    image = load_sample_gray('flower.jpg', 16)
    assert image.shape == (16, 16) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) < float(image.max()) <= 1.0
    with pytest.raises(ValueError, match=r"image must be a scikit-learn sample image.*'lena\.png'"):
        load_sample_gray('lena.png')
    with pytest.raises(ValueError, match='2-d'):
        filter_targets(torch.zeros(1, 8, 8))


def test_fit_reduces_the_mse_and_keeps_sigma_in_its_clamp():
    config = LearnFiltersConfig(image_size=20, iterations=25, sigma_bounds=(0.2, 0.3))
    image = load_sample_gray(config.image, config.image_size)
    targets = filter_targets(image)
    torch.manual_seed(0)
    layer = build_filter_layer('aconv', targets.shape[0], config)
    assert isinstance(layer, timm_aconv.AdaptiveConv2d) and layer.bias is None
    assert torch.equal(layer.sigma, torch.full((9,), 0.25))
    fit = fit_filters(layer, image, targets, config)
    assert fit.sigma_history.shape == (26, 9)
    # the clamp hook (timm_aconv.register_sigma_clamp) ran after every step
    low, high = torch.tensor([0.2, 0.3])  # float32, as sigma
    assert fit.sigma_history[1:].min() >= low and fit.sigma_history[1:].max() <= high
    assert (fit.sigma_history[1:] == low).any()  # the bound was hit, so the clamp acted
    assert fit.final_mse < fit.mse_history[0] / 2
    assert fit.best_mse <= fit.final_mse
    assert fit.prediction.shape == targets.shape


def test_weight_inits_set_the_keras_bounds():
    config = LearnFiltersConfig(aconv_weight_init='he_uniform', conv_weight_init='glorot_uniform')
    torch.manual_seed(0)
    aconv, conv = build_filter_layer('aconv', 9, config), build_filter_layer('conv', 9, config)
    he_bound, glorot_bound = (6 / 81) ** 0.5, (6 / (81 + 729)) ** 0.5
    assert glorot_bound * 0.9 < float(conv.weight.detach().abs().max()) <= glorot_bound
    assert he_bound * 0.9 < float(aconv.weight.detach().abs().max()) <= he_bound
    with pytest.raises(ValueError, match="kind must be one of \\('aconv', 'conv'\\)"):
        build_filter_layer('dense', 9, config)


def test_both_layers_start_from_the_same_seed():
    result = run_learn_filters(LearnFiltersConfig(image_size=12, iterations=1, conv_weight_init='he_uniform'))
    aconv, conv = result.fits['aconv'].layer, result.fits['conv'].layer
    assert set(result.fits) == {'aconv', 'conv'}
    assert result.fits['conv'].sigma_history is None
    # one step later the weights differ, but the draws came from the same seed: same signs mostly
    agreement = float((aconv.weight.sign() == conv.weight.sign()).float().mean())
    assert agreement > 0.9


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--iterations', '0'], '"iterations": Not of type PositiveInt: 0 does not conform to restriction v>0'),
        (['--kernel_size', '8'], 'kernel_size must be an odd integer'),
        (['--image', 'lena.png'], "\"image\": Expected a typing.Literal\\['china.jpg', 'flower.jpg'\\]"),
        (['--conv_weight_init', 'orthogonal'], '"conv_weight_init": Expected a typing.Literal'),
        (['--clip_value', '-1'], '"clip_value".* PositiveFloat: .* restriction v>0 .* Given value: -1'),
    ],
)
def test_config_errors_name_the_key(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(LearnFiltersConfig, ['--config', CONFIG, *argv])


def test_recipe_runs_end_to_end(tmp_path, capsys):
    recipe = runpy.run_path(str(ROOT / 'recipes' / 'learn_filters.py'))
    summary = recipe['main'](
        ['--config', CONFIG, '--iterations', '15', '--image_size', '16', '--output_dir', str(tmp_path)]
    )
    printed = capsys.readouterr().out
    assert 'ACONV final MSE' in printed and 'CONV  final MSE' in printed
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['config']['iterations'] == 15 and results['config']['lr'] == 0.1
    for kind in ('aconv', 'conv'):
        assert results['fits'][kind]['final_mse'] == pytest.approx(summary[kind]['final_mse'])
        assert len(results['fits'][kind]['mse_history']) == 15
    assert set(results['fits']['aconv']['final_sigma']) == set(FILTER_NAMES)
    assert (tmp_path / 'learn_filters.png').stat().st_size > 10_000


def test_layer_kernel_rows_match_the_layer():
    layer = timm_aconv.AdaptiveConv2d(3, 5, 7, sigma_init=(0.1, 0.5))
    rows = layer_kernel_rows(layer, in_channel=2, max_filters=4)
    assert list(rows) == ['W', 'U', 'W ∘ U']
    assert all(kernels.shape == (4, 7, 7) for kernels in rows.values())
    torch.testing.assert_close(rows['W ∘ U'], layer.product_kernel()[:4, 2].detach())
    torch.testing.assert_close(rows['U'], layer.envelope()[:4].detach())
    conv_rows = layer_kernel_rows(nn.Conv2d(1, 2, 3))
    assert list(conv_rows) == ['W'] and conv_rows['W'].shape == (2, 3, 3)
    with pytest.raises(ValueError, match=r'in_channel must be in \[0, 2\]'):
        layer_kernel_rows(layer, in_channel=3)
    with pytest.raises(TypeError, match=r'nn\.Conv2d or AdaptiveConv2d'):
        layer_kernel_rows(nn.Linear(2, 2))


def test_kernel_figures_draw_one_column_per_filter():
    figure = plot_layer_kernels(timm_aconv.AdaptiveConv2d(1, 6, 5), max_filters=4)
    assert len(figure.axes) == 3 * 4
    assert [axis.get_title() for axis in figure.axes[:2]] == ['σ=0.10', 'σ=0.18']  # linspace(0.1, 0.5, 6)
    _, axes = new_figure(1, 1)
    plot_sigma_trajectories(axes[0, 0], torch.rand(10, 3), labels=['a', 'b', 'c'])
    assert len(axes[0, 0].lines) == 3
    with pytest.raises(ValueError, match='sigma_history must be \\(steps, filters\\)'):
        plot_sigma_trajectories(axes[0, 0], torch.rand(10))
