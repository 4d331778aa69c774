"""The segmentation recipe (paper section 4.4): data, metric, models, figures, end-to-end run"""

import dataclasses
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import timm_aconv
from timm_aconv.engine import Callback, ConfigError, parse_config
from timm_aconv.engine.metrics import SegmentationMetric
from timm_aconv.experiments.datasets import DatasetNotFoundError
from timm_aconv.experiments.figures import plot_segmentation_examples
from timm_aconv.experiments.segmentation import SegmentationConfig, create_segmentation_model, parse_variant
from timm_aconv.experiments.segmentation_data import (
    TRIMAP_CLASSES,
    SegmentationDataset,
    authors_validation_set,
    build_segmentation_data,
    build_segmentation_transform,
    shapes_sample,
)

pytestmark = pytest.mark.usefixtures('one_torch_thread')
ROOT = Path(__file__).resolve().parents[1]

CONFIG = str(ROOT / 'recipes' / 'configs' / 'segmentation.yaml')
PETS_CONFIG = str(ROOT / 'recipes' / 'configs' / 'segmentation_oxford_pets.yaml')


def test_metric_counts_pixels_and_ious_exactly():
    metric = SegmentationMetric(len(TRIMAP_CLASSES), TRIMAP_CLASSES)
    targets = torch.tensor([[[0, 0], [1, 2]], [[1, 1], [1, 1]]])  # two 2×2 images
    predicted = torch.tensor([[[0, 1], [1, 2]], [[1, 1], [0, 1]]])
    logits = nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float() * 5
    per_sample = metric.per_sample(logits, targets)  # tp, fp, fn, tn per image and class, loss, fractional pixels
    assert [tuple(value.shape) for value in per_sample] == [(2, 3)] * 4 + [(2,), (2,)]
    assert per_sample[-1].tolist() == [0, 0]
    # update with each image separately, as gathers of two processes would
    metric.update(*(value[:1] for value in per_sample))
    metric.update(*(value[1:] for value in per_sample))
    values = metric.compute()
    # confusion (true × predicted): pet [1, 1, 0], background [1, 4, 0], border [0, 0, 1]
    assert values['pixel_accuracy'] == pytest.approx(6 / 8)
    assert values['iou_pet'] == pytest.approx(1 / 3)
    assert values['iou_background'] == pytest.approx(4 / 6)
    assert values['iou_border'] == pytest.approx(1.0)
    assert values['miou'] == pytest.approx((1 / 3 + 4 / 6 + 1) / 3)
    expected_loss = nn.functional.cross_entropy(logits, targets)
    assert values['loss'] == pytest.approx(float(expected_loss), rel=1e-6)
    metric.reset()
    with pytest.raises(RuntimeError, match='validation set is empty'):
        metric.compute()


def _confusion_matrix_reference(logits, targets, num_classes):
    """The metric as it was computed before it used smp.metrics: a per-image confusion matrix (true ×
    predicted) without the fractional-label pixels, which count as errors in the pixel accuracy."""
    labels = targets.long()
    whole = (targets == labels).flatten(1)
    index = (labels * num_classes + logits.argmax(1)).flatten(1)
    counts = torch.zeros(index.shape[0], num_classes * num_classes)
    counts.scatter_add_(1, index, whole.float())
    confusion = counts.sum(0).double().view(num_classes, num_classes)
    true_positive = confusion.diag()
    iou = true_positive / (confusion.sum(0) + confusion.sum(1) - true_positive).clamp(min=1)
    pixels = float(confusion.sum()) + float((~whole).sum())
    return dict(
        pixel_accuracy=float(true_positive.sum()) / pixels,
        miou=float(iou.mean()),
        **{f'iou_class{index}': float(value) for index, value in enumerate(iou)},
    )


@pytest.mark.parametrize('fractional', [False, True])
def test_metric_equals_the_confusion_matrix_numbers(fractional):
    generator = torch.Generator().manual_seed(0)
    num_classes = 5  # class 4 is neither present nor predicted: its IoU is 0 (no 0/0)
    logits = torch.randn(6, num_classes, 12, 10, generator=generator)
    logits[:, 4] = -10.0
    targets = torch.randint(0, num_classes - 1, (6, 12, 10), generator=generator)
    targets[:, :, :3] = 0  # class 0 most frequent, so the classes' IoUs differ
    if fractional:  # the authors' bilinear masks: some labels between classes
        targets = targets.float()
        targets[torch.rand(targets.shape, generator=generator) < 0.2] += 0.5
        targets.clamp_(max=num_classes - 2)
    logits[5] = -logits[5].abs()
    logits[5, 3] = 1.0  # the last image predicts class 3 everywhere
    metric = SegmentationMetric(num_classes)
    for batch in (slice(0, 2), slice(2, 5), slice(5, 6)):  # uneven batches, as a distributed evaluation gathers them
        metric.update(*metric.per_sample(logits[batch], targets[batch]))
    values = metric.compute()
    reference = _confusion_matrix_reference(logits, targets, num_classes)
    assert {key: values[key] for key in reference} == reference  # exactly equal
    assert values['iou_class4'] == 0.0 and len({values[f'iou_class{index}'] for index in range(4)}) == 4
    assert 0 < values['pixel_accuracy'] < 1 and values['miou'] > 0


def test_metric_without_smp_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, 'segmentation_models_pytorch.metrics', None)  # as if SMP were not installed
    with pytest.raises(
        ImportError,
        match=r"SegmentationMetric computes with segmentation-models-pytorch's metrics .*"
        r"pip install 'timm-aconv\[smp\]'",
    ):
        SegmentationMetric(3)


def test_shapes_are_deterministic_trimaps():
    image, labels = shapes_sample(3, size=48, seed=1)
    again_image, again_labels = shapes_sample(3, size=48, seed=1)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8 and labels.shape == (48, 48)
    assert np.array_equal(image, again_image) and np.array_equal(labels, again_labels)
    assert set(np.unique(labels)) == {0, 1, 2}  # pet, background, border
    assert not np.array_equal(labels, shapes_sample(4, size=48, seed=1)[1])


class _HalfImage:
    """A left-right asymmetric image whose mask is its bright half."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        image = np.zeros((16, 16, 3), dtype=np.uint8)  # no resize: no blended edge
        image[:, : 4 + index] = 255
        return image, (image[..., 0] > 0).astype(np.uint8)


def test_transform_scales_to_plus_minus_two_and_moves_image_and_mask_together():
    plain = SegmentationDataset(_HalfImage(), build_segmentation_transform(16, augment=False))
    image, mask = plain[0]
    assert image.shape == (3, 16, 16) and mask.shape == (16, 16) and mask.dtype == torch.int64
    assert float(image.max()) == pytest.approx(2.0) and float(image.min()) == pytest.approx(-2.0)
    torch.manual_seed(0)
    augmented = SegmentationDataset(_HalfImage(), build_segmentation_transform(16, augment=True))
    flipped = 0
    for index in range(len(augmented)):
        image, mask = augmented[index]
        assert torch.equal(mask, (image[0] > 0).long())  # brightness ±0.2 keeps the halves apart
        flipped += int(not torch.equal(mask, plain[index][1]))
    assert 0 < flipped < len(augmented)  # the flip happens with probability 0.5


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--variants', 'aconv8'], "'aconv<n>' or 'conv<n>' with an odd kernel size"),
        (['--variants', 'pool3'], "got 'pool3'"),
        (['--variants', 'conv3,conv3'], 'must not repeat'),
        (['--img_size', '100'], 'img_size must be a multiple of 16'),
        (['--dataset', 'voc'], "\"dataset\": Expected a typing.Literal\\['shapes', 'oxford_pets'\\]"),
        (['--repeats', '0'], '"repeats": Not of type PositiveInt: 0 does not conform to restriction v>0'),
    ],
)
def test_config_errors_name_the_key(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(SegmentationConfig, ['--config', CONFIG, *argv])


def test_paper_config_holds_the_paper_settings():
    config = parse_config(SegmentationConfig, ['--config', PETS_CONFIG])
    assert (config.dataset, config.img_size, config.batch_size, config.epochs, config.repeats) == (
        'oxford_pets',
        128,
        64,
        75,
        5,
    )
    assert (config.optimizer, config.lr, config.clip_value, config.plateau_factor) == ('adam', 0.01, 1.0, 0.2)
    assert config.variants == ['aconv7', 'conv7', 'conv3'] and parse_variant('conv3') == (False, 3)


def test_missing_oxford_pets_names_dataset_path_and_how_to_get_it(tmp_path):
    config = SegmentationConfig(dataset='oxford_pets', data_dir=str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError, match=f"'oxford_pets' was not found in '{tmp_path}'") as error:
        build_segmentation_data(config)
    assert 'images.tar.gz and annotations.tar.gz' in str(error.value)
    assert str(tmp_path / 'oxford-iiit-pet') in str(error.value)


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(module for module in model.modules() if isinstance(module, nn.Conv2d))


@pytest.mark.parametrize('arch', ['paper_unet', 'smp_unet'])
def test_models_differ_only_in_the_first_convolution(arch):
    config = SegmentationConfig(arch=arch)
    aconv, conv3 = create_segmentation_model(config, 'aconv7'), create_segmentation_model(config, 'conv3')
    first = _first_conv(aconv)
    assert isinstance(first, timm_aconv.AdaptiveConv2d) and first.kernel_size == (7, 7) and first.stride == (2, 2)
    torch.testing.assert_close(first.sigma.detach(), torch.linspace(0.1, 0.25, first.out_channels))
    assert first.sigma_bounds == pytest.approx((1 / 7, 5.0))
    assert len(list(timm_aconv.adaptive_layers(aconv))) == 1
    baseline = _first_conv(conv3)
    assert type(baseline) is nn.Conv2d and baseline.kernel_size == (3, 3) and baseline.stride == (2, 2)
    assert not list(timm_aconv.adaptive_layers(conv3))
    with torch.no_grad():
        assert conv3.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_examples_figure_checks_shapes():
    images, masks = torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long)
    figure = plot_segmentation_examples(images, masks, {'ACONV7': masks, 'CONV3': masks})
    assert [axis.get_title() for axis in figure.axes[:4]] == ['input', 'true mask', 'ACONV7', 'CONV3']
    (key,) = figure.legends  # the colour key of the mask classes
    assert [text.get_text() for text in key.get_texts()] == ['pet', 'background', 'border']
    with pytest.raises(ValueError, match="predictions\\['CONV3'\\] must have the masks' shape"):
        plot_segmentation_examples(images, masks, {'CONV3': masks[:1]})


def test_recipe_runs_end_to_end_and_resumes(tmp_path, capsys):
    recipe = runpy.run_path(str(ROOT / 'recipes' / 'train_segmentation.py'))
    argv = [
        '--config',
        CONFIG,
        '--output_dir',
        str(tmp_path),
        '--img_size',
        '16',
        '--epochs',
        '1',
        '--shapes_train_size',
        '8',
        '--shapes_val_size',
        '4',
        '--batch_size',
        '4',
        '--variants',
        'aconv7,conv3',
        '--repeats',
        '2',
        '--examples',
        '2',
    ]
    result = recipe['main'](argv)
    printed = capsys.readouterr().out
    assert '| ACONV 7×7 | 2 |' in printed and '| CONV 3×3 | 2 |' in printed
    for variant in ('aconv7', 'conv3'):
        for seed in (0, 1):
            run = tmp_path / variant / f'seed{seed}'
            history = json.loads((run / 'metrics.json').read_text())
            assert len(history) == 1 and {'val_pixel_accuracy', 'val_miou', 'val_iou_border'} <= set(history[0])
            assert (run / 'model.safetensors').is_file()
    sigmas = json.loads((tmp_path / 'aconv7' / 'seed0' / 'sigmas.json').read_text())
    final_sigma = np.asarray(sigmas['encoder.entry.0'][-1])
    assert final_sigma.min() >= 1 / 7 - 1e-6 and final_sigma.max() <= 5 + 1e-6
    aconv_row, conv_row = result.rows
    assert aconv_row['variant'] == 'aconv7' and aconv_row['t'] is None  # the reference of the t-tests
    assert np.isfinite(conv_row['t']) and 0 <= conv_row['p'] <= 1
    assert conv_row['p_holm'] == pytest.approx(conv_row['p'])  # one test: Holm leaves it as is
    assert '| p (Holm) | d |' in printed and 'std with ddof=1' in printed
    assert json.loads((tmp_path / 'comparison.json').read_text())['rows'][1]['p'] == pytest.approx(conv_row['p'])
    import yaml

    settings = yaml.safe_load((tmp_path / 'settings.yaml').read_text())
    assert sorted(settings['runs']) == ['aconv7/seed0', 'aconv7/seed1', 'conv3/seed0', 'conv3/seed1']
    assert settings['runs']['conv3/seed1'] == dict(
        seed=1, output_dir=str(tmp_path / 'conv3' / 'seed1'), variants=['conv3']
    )
    for name in (
        'comparison.md',
        'comparison.json',
        'comparison_curves.png',
        'examples.png',
        'aconv7_first_conv_kernels.png',
        'conv3_first_conv_kernels.png',
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    # finished runs are read back, not trained again
    (tmp_path / 'examples.png').unlink()
    resumed = recipe['main']([*argv, '--resume'])
    assert resumed.peak_accuracy == result.peak_accuracy
    assert (tmp_path / 'examples.png').is_file()


class _HalfAndHalf:
    """``length`` 8×8 samples whose left half is class 0 (pet) and right half class 2 (border)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        labels = np.zeros((8, 8), dtype=np.uint8)
        labels[:, 4:] = 2
        return np.full((8, 8, 3), index % 256, dtype=np.uint8), labels


def test_authors_validation_protocol_scores_704_images_with_bilinear_masks():
    val = authors_validation_set(_HalfAndHalf(3669), img_size=16)
    assert len(val) == 704  # the authors' 22 validation batches of 32
    _, mask = val[703]
    # 8 -> 16 bilinear: the two columns at the class border get 0.5 and 1.5
    assert mask.dtype == torch.float32 and sorted(torch.unique(mask).tolist()) == [0.0, 0.5, 1.5, 2.0]
    predicted = torch.zeros(16, 16, dtype=torch.long)
    predicted[:, 8:] = 2  # the nearest-resized truth
    logits = nn.functional.one_hot(predicted, 3).permute(2, 0, 1).float()[None] * 5
    metric = SegmentationMetric(len(TRIMAP_CLASSES), TRIMAP_CLASSES)
    metric.update(*metric.per_sample(logits, mask[None]))
    values = metric.compute()
    assert values['pixel_accuracy'] == pytest.approx(224 / 256)  # fractional pixels never match, as in Keras
    assert values['iou_pet'] == values['iou_border'] == pytest.approx(1.0)  # IoUs over whole-label pixels
    truncated = mask.long()[None]  # Keras' sparse cross-entropy cast the labels: 0.5 -> 0, 1.5 -> 1
    assert values['loss'] == pytest.approx(float(nn.functional.cross_entropy(logits, truncated)), rel=1e-6)
    with pytest.raises(ConfigError, match='first 704 test images, but the validation split has only 703'):
        authors_validation_set(_HalfAndHalf(703), img_size=16)


def test_validation_protocol_defaults_to_the_full_split():
    config = parse_config(SegmentationConfig, ['--config', CONFIG, '--shapes_val_size', '5', '--img_size', '16'])
    assert config.val_protocol == 'full' and len(build_segmentation_data(config)[1]) == 5
    assert parse_config(SegmentationConfig, ['--config', PETS_CONFIG]).val_protocol == 'full'
    with pytest.raises(ConfigError, match='first 704 test images'):
        build_segmentation_data(dataclasses.replace(config, val_protocol='authors'))
    with pytest.raises(ConfigError, match=r"\"val_protocol\": Expected a typing.Literal\['full', 'authors'\]"):
        parse_config(SegmentationConfig, ['--config', CONFIG, '--val_protocol', 'paper'])


class KeepRunWeights(Callback):
    """Per run (output_dir): the trained weights after every epoch, and the trained model."""

    def __init__(self) -> None:
        self.weights, self.models = {}, {}

    def on_epoch_end(self, trainer, record) -> None:
        state = {name: tensor.clone() for name, tensor in trainer.unwrapped_model.state_dict().items()}
        self.weights.setdefault(Path(trainer.config.output_dir), []).append(state)

    def on_fit_end(self, trainer) -> None:
        self.models[Path(trainer.config.output_dir)] = trainer.unwrapped_model


SMOKE = [
    '--img_size',
    '32',
    '--shapes_train_size',
    '4',
    '--shapes_val_size',
    '2',
    '--batch_size',
    '2',
    '--plots',
    'false',
    '--save_every',
    '0',
    '--progress',
    'false',
    '--log_with',
    'none',
    '--num_threads',
    '1',
]


def test_smp_unet_runs_reload_with_smp_from_pretrained(tmp_path):
    import segmentation_models_pytorch as smp

    recipe = runpy.run_path(str(ROOT / 'recipes' / 'train_segmentation.py'))
    runs = KeepRunWeights()
    recipe['main'](
        [
            '--arch',
            'smp_unet',
            '--encoder_name',
            'resnet18',
            '--variants',
            'aconv7,conv3',
            '--epochs',
            '1',
            '--max_steps_per_epoch',
            '1',
            '--output_dir',
            str(tmp_path),
            *SMOKE,
        ],
        callbacks=[runs],
    )
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for variant in ('aconv7', 'conv3'):
        run = tmp_path / variant / 'seed0'
        trained = runs.models[run].eval()
        record = json.loads((run / 'metrics.json').read_text())[0]
        for folder in (run, run / 'best'):  # the final and the best model (one epoch: the same)
            model = smp.from_pretrained(str(folder)).eval()
            assert type(model) is timm_aconv.smp.AconvUnet
            stem = model.encoder.conv1
            assert stem.kernel_size == ((7, 7) if variant == 'aconv7' else (3, 3))
            assert isinstance(stem, timm_aconv.AdaptiveConv2d) == (variant == 'aconv7')
            with torch.no_grad():
                assert torch.equal(model(images), trained(images)), folder
            card = (folder / 'README.md').read_text()  # SMP's model card: the saved epoch's metrics, the dataset
            assert f'"val_pixel_accuracy": {record["val_pixel_accuracy"]}' in card and '"epoch": 1' in card
            assert 'Dataset name: shapes (trimaps: pet, background, border; 32×32' in card
            assert 'import timm_aconv  # registers' in card.split('smp.from_pretrained(')[0]  # loadable as it says


def test_push_to_hub_sends_the_best_run_and_config_yaml_reruns_the_comparison(tmp_path, monkeypatch):
    import segmentation_models_pytorch as smp

    pushed = []

    def push_to_hub(model, repo_id, **kwargs):
        pushed.append(
            dict(
                repo_id=repo_id, weights={name: tensor.clone() for name, tensor in model.state_dict().items()}, **kwargs
            )
        )

    monkeypatch.setattr(smp.base.SegmentationModel, 'push_to_hub', push_to_hub)
    recipe = runpy.run_path(str(ROOT / 'recipes' / 'train_segmentation.py'))
    runs = KeepRunWeights()
    argv = ['--config', CONFIG, '--variants', 'aconv7', '--epochs', '3', '--push_to_hub', 'me/unet', *SMOKE]
    result = recipe['main']([*argv, '--output_dir', str(tmp_path / 'first')], callbacks=[runs])
    run = tmp_path / 'first' / 'aconv7' / 'seed0'
    best = json.loads((run / 'best' / 'best.json').read_text())
    assert [push['repo_id'] for push in pushed] == ['me/unet']
    assert all(
        torch.equal(tensor, runs.weights[run][best['epoch'] - 1][name]) for name, tensor in pushed[0]['weights'].items()
    )
    card = pushed[0]['model_card_kwargs']
    assert card['metrics']['epoch'] == best['epoch'] and card['metrics']['val_loss'] == best['value']
    assert card['dataset'].startswith('shapes')
    # the comparison's config.yaml reruns it exactly
    rerun = recipe['main'](
        ['--config', str(tmp_path / 'first' / 'config.yaml'), '--output_dir', str(tmp_path / 'again')]
    )
    assert rerun.histories == result.histories and len(pushed) == 2
    with pytest.raises(ConfigError, match=r'push_to_hub pushes the model of one training run.* are 2 runs'):
        parse_config(SegmentationConfig, ['--config', CONFIG, '--variants', 'aconv7,conv3', '--push_to_hub', 'me/unet'])
