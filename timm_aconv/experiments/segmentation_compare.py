"""The segmentation comparison: every U-Net variant over repeats, the t-test table and figures

:func:`train_segmentation` trains each ``variant`` of a
:class:`~timm_aconv.experiments.segmentation.SegmentationConfig` ``repeats`` times (seeds ``seed``,
``seed + 1``, …), keeps each run's peak validation pixel accuracy and mIoU, and writes the
comparison table (a two-tailed Student t-test of the first adaptive variant against each other
one), the mean curves, the first convolution's kernels and the Figure 7 style examples.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..engine.callbacks import Callback
from ..engine.config import save_config
from ..engine.launch import process_state
from ..layers import adaptive_layers
from .segmentation import SegmentationConfig, first_conv, parse_variant, train_variant, variant_config
from .segmentation_data import build_segmentation_data
from .settings import write_settings
from .statistics import STD_DDOF, cohens_d, describe_peaks, holm_adjust, ttest_peaks

__all__ = ['SegmentationResult', 'train_segmentation']


@dataclass
class SegmentationResult:
    """Per variant: the histories of its repeats and their peak validation pixel accuracy / mIoU."""

    histories: Dict[str, List[List[Dict[str, float]]]]
    peak_accuracy: Dict[str, List[float]]
    peak_miou: Dict[str, List[float]]
    rows: List[Dict[str, float]]
    markdown: str


def _summary_rows(peak_accuracy: Dict[str, List[float]], peak_miou: Dict[str, List[float]]) -> List[Dict[str, Any]]:
    """Mean, std (ddof=1), max per variant; a two-tailed t-test and Cohen's d of the first adaptive
    variant against each other variant when both have >= 2 repeats (else None), and its p
    Holm-corrected over those tests."""
    reference = next((variant for variant in peak_accuracy if parse_variant(variant)[0]), None)
    rows = []
    for variant, peaks in peak_accuracy.items():
        accuracy, miou = describe_peaks(peaks), describe_peaks(peak_miou[variant])
        row = dict(
            variant=variant,
            repeats=accuracy['repeats'],
            accuracy_mean=accuracy['mean'],
            accuracy_std=accuracy['std'],
            accuracy_max=accuracy['max'],
            miou_mean=miou['mean'],
            miou_max=miou['max'],
            t=None,
            p=None,
            p_holm=None,
            d=None,
        )
        if reference is not None and variant != reference:
            row['t'], row['p'] = ttest_peaks(peak_accuracy[reference], peaks)
            row['d'] = cohens_d(peak_accuracy[reference], peaks)
        rows.append(row)
    for row, adjusted in zip(rows, holm_adjust([row['p'] for row in rows])):
        row['p_holm'] = adjusted
    return rows


def _number(value: Optional[float], spec: str) -> str:
    return '–' if value is None else format(value, spec)


def _markdown(rows: List[Dict[str, Any]], title: str) -> str:
    lines = [
        f'### {title}',
        '',
        '| first conv | repeats | peak pixel acc. mean±std (%) | max (%) | peak mIoU mean (%) | t | p | p (Holm) | d |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for row in rows:
        adaptive, size = parse_variant(row['variant'])
        name = f'{"ACONV" if adaptive else "CONV"} {size}×{size}'
        lines.append(
            f'| {name} | {row["repeats"]} | {100 * row["accuracy_mean"]:.2f}±{100 * row["accuracy_std"]:.2f} '
            f'| {100 * row["accuracy_max"]:.2f} | {100 * row["miou_mean"]:.2f} | {_number(row["t"], ".2f")} '
            f'| {_number(row["p"], ".3g")} | {_number(row["p_holm"], ".3g")} | {_number(row["d"], ".2f")} |'
        )
    lines += [
        '',
        f'Peak validation pixel accuracy over epochs per run, std with ddof={STD_DDOF}; t, p: two-tailed '
        'Student t-test of the adaptive variant against each other one (needs repeats >= 2); p (Holm): '
        "corrected for those tests; d: Cohen's d (pooled std).",
    ]
    return '\n'.join(lines)


def _write_figures(config: SegmentationConfig, histories, models, val_set) -> None:
    from .figures import plot_segmentation_examples
    from .kernel_plots import plot_layer_kernels
    from .training_plots import plot_mean_curves

    directory = Path(config.output_dir)
    curves = {
        variant.upper(): np.asarray([[record['val_pixel_accuracy'] for record in history] for history in runs])
        for variant, runs in histories.items()
    }
    plot_mean_curves(curves, str(directory / 'comparison_curves.png'), title='validation pixel accuracy')
    for variant, model in models.items():
        layer = next(adaptive_layers(model), None) or first_conv(model)[1]
        figure = plot_layer_kernels(layer, max_filters=8)
        figure.savefig(directory / f'{variant}_first_conv_kernels.png', dpi=100)
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


def train_segmentation(config: SegmentationConfig, callbacks: Sequence[Callback] = ()) -> SegmentationResult:
    """Trains every variant ``repeats`` times (seeds ``seed``, ``seed + 1``, …) and summarizes.

    Each run writes its ``config.yaml``, metrics, ``sigmas.json``, ``checkpoints/``, and its final
    and best (``best/``) model in SMP's ``save_pretrained`` layout to
    ``output_dir/<variant>/seed<seed>``; ``output_dir`` gets ``config.yaml`` (``--config`` on it
    reruns the comparison), ``comparison.md``/``.json``, ``settings.yaml`` (the resolved settings
    of every run) and, with
    ``plots=True``, ``comparison_curves.png``, ``<variant>_first_conv_kernels.png`` and
    ``examples.png`` (the first repeat of each variant). With ``resume=True`` finished runs are read
    back and unfinished ones continue from their checkpoint.
    """
    # the engine's Accelerator reads ACCELERATE_USE_CPU (accelerate launch --cpu) into the shared state
    state = process_state(config.cpu)
    if state.is_main_process:
        save_config(config, config.output_dir)
    with state.main_process_first():  # one process downloads, the others then find the files
        train_set, val_set = build_segmentation_data(config)
    histories: Dict[str, List[List[Dict[str, float]]]] = {}
    models: Dict[str, nn.Module] = {}
    runs: Dict[str, SegmentationConfig] = {}
    for variant in config.variants:
        for repeat in range(config.repeats):
            run = variant_config(config, variant, repeat)
            runs[f'{variant}/seed{run.seed}'] = run
            history, model = train_variant(run, variant, train_set, val_set, callbacks)
            histories.setdefault(variant, []).append(history)
            models.setdefault(variant, model)
            peak = max(record['val_pixel_accuracy'] for record in history)
            if state.is_main_process:
                print(f'{variant} seed={run.seed}: peak validation pixel accuracy {peak:.4f}', flush=True)
    peak_accuracy = {
        variant: [max(r['val_pixel_accuracy'] for r in history) for history in runs]
        for variant, runs in histories.items()
    }
    peak_miou = {
        variant: [max(r['val_miou'] for r in history) for history in runs] for variant, runs in histories.items()
    }
    state.destroy_process_group()  # the runs kept it (Trainer.fit(end_training=False)); no-op when single-process
    rows = _summary_rows(peak_accuracy, peak_miou)
    model_name = 'paper U-Net' if config.arch == 'paper_unet' else f'SMP U-Net ({config.encoder_name})'
    markdown = _markdown(rows, f'{model_name} on {config.dataset}, {config.img_size}×{config.img_size}')
    if state.is_main_process:
        directory = Path(config.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / 'comparison.md').write_text(markdown + '\n')
        (directory / 'comparison.json').write_text(
            json.dumps(dict(rows=rows, peak_accuracy=peak_accuracy, peak_miou=peak_miou, std_ddof=STD_DDOF), indent=1)
        )
        write_settings(directory / 'settings.yaml', config, runs)
        if config.plots:
            _write_figures(config, histories, models, val_set)
    return SegmentationResult(histories, peak_accuracy, peak_miou, rows, markdown)
