""" The paper's comparison protocol (Algorithm 1): CONV vs ACONV over kernel sizes and repeats

For each kernel size n and each arm (CONV: ``baseline_model``; ACONV: ``model``, converted
with :func:`timm_aconv.convert_convs` when ``convert=True``), train ``repeats`` times with seeds
``seed, seed + 1, …`` and keep each run's *peak* validation accuracy over epochs. Per size the
table gives mean ± std (sample std, ddof=1) and max of the peaks of each arm and a two-tailed
Student t-test (``scipy.stats.ttest_ind``) of ACONV against CONV; the *best size* is the size of
the highest ACONV peak, as in the paper's Table 2. Outputs in ``output_dir``:
``comparison.md`` / ``.csv`` / ``.json`` and ``comparison_curves.png`` (mean validation
accuracy per epoch with ±1 std bands, the paper's Figures 5–6) and ``config.yaml`` (the resolved
settings: ``--config`` on it reruns the comparison). Each run keeps its own directory
``<arm>_k<n>/seed<seed>`` (its own ``config.yaml``, metrics and models); with ``resume=True``
finished runs are read back, not re-run.
"""
import csv
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from accelerate import PartialState

from .classification import ClassificationConfig, train_classification
from .config import ConfigError, save_config
from .history import read_history
from .statistics import describe_peaks, ttest_peaks

__all__ = ['CompareConfig', 'ComparisonResult', 'run_comparison', 'summarize', 'ARMS']

ARMS = ('CONV', 'ACONV')


@dataclass
class CompareConfig(ClassificationConfig):
    """ Algorithm 1: CONV (``baseline_model``) vs ACONV (``model``) per kernel size, ``repeats`` seeds each.

    ``baseline_model`` defaults to the ordinary twin of ``model`` (``aconv_resnet20`` →
    ``conv_resnet20``), or to ``model`` itself with ``convert=True`` (only the ACONV arm is
    converted). ``kernel_size`` is replaced by each of ``kernel_sizes``.
    """
    baseline_model: Optional[str] = None
    kernel_sizes: List[int] = field(default_factory=lambda: [3, 5, 7, 9])
    repeats: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.baseline_model is None:
            if self.convert:
                self.baseline_model = self.model
            elif self.model.startswith('aconv_'):
                self.baseline_model = 'conv_' + self.model[len('aconv_'):]
            else:
                raise ConfigError(f'baseline_model is needed: {self.model!r} has no conv_ twin; set baseline_model, '
                                  'or convert=True to compare the model with its converted self')
        if self.push_to_hub is not None:
            raise ConfigError('push_to_hub pushes the model of one training run (recipes/train_classification.py); '
                              'a comparison trains many')
        if self.repeats < 2:
            raise ConfigError(f'repeats must be >= 2 for a t-test, got {self.repeats}')
        if not self.kernel_sizes:
            raise ConfigError('kernel_sizes must list at least one kernel size, e.g. [3, 5, 7, 9]')
        for size in self.kernel_sizes:
            if size < 3 or size % 2 == 0:
                raise ConfigError(f'kernel_sizes must be odd integers >= 3, got {self.kernel_sizes}')


@dataclass
class ComparisonResult:
    """ Peak accuracies ``peaks[arm][size]`` (one per repeat), curves, and the summary rows. """
    peaks: Dict[str, Dict[int, List[float]]]
    curves: Dict[str, Dict[int, List[List[float]]]]
    rows: List[Dict[str, float]]
    best_size: int
    markdown: str
    files: List[Path]


def _run_config(config: CompareConfig, arm: str, size: int, repeat: int) -> ClassificationConfig:
    values = {field_.name: getattr(config, field_.name) for field_ in dataclasses.fields(ClassificationConfig)}
    adaptive = arm == 'ACONV'
    seed = config.seed + repeat
    values.update(
        model=config.model if adaptive else config.baseline_model, convert=config.convert and adaptive,
        kernel_size=size, seed=seed, output_dir=str(Path(config.output_dir) / f'{arm.lower()}_k{size}' / f'seed{seed}'),
        plots=False, resume=False, push_to_hub=None)
    return ClassificationConfig(**values)


def _finished_history(run: ClassificationConfig) -> Optional[List[Dict[str, float]]]:
    try:
        history = read_history(run.output_dir)
    except FileNotFoundError:
        return None
    return history if len(history) == run.epochs else None


def summarize(peaks: Dict[str, Dict[int, List[float]]]) -> List[Dict[str, float]]:
    """ One row per kernel size: mean, std (ddof=1), max per arm, t and two-tailed p (ACONV vs CONV). """
    rows = []
    for size in peaks['ACONV']:
        conv, aconv = describe_peaks(peaks['CONV'][size]), describe_peaks(peaks['ACONV'][size])
        t_stat, p_value = ttest_peaks(peaks['ACONV'][size], peaks['CONV'][size])
        rows.append(dict(
            kernel_size=size,
            conv_mean=conv['mean'], conv_std=conv['std'], conv_max=conv['max'],
            aconv_mean=aconv['mean'], aconv_std=aconv['std'], aconv_max=aconv['max'],
            t=t_stat, p=p_value, repeats=aconv['repeats']))
    return rows


def _markdown(rows: List[Dict[str, float]], best_size: int, title: str) -> str:
    lines = [f'### {title}', '',
             '| kernel | CONV mean±std (%) | CONV max (%) | ACONV mean±std (%) | ACONV max (%) | t | p |',
             '|---|---|---|---|---|---|---|']
    for row in rows:
        star = '*' if row['p'] < 0.05 else ''
        best = ' (best)' if row['kernel_size'] == best_size else ''
        lines.append(
            f"| {row['kernel_size']}×{row['kernel_size']}{best} "
            f"| {100 * row['conv_mean']:.2f}±{100 * row['conv_std']:.2f} | {100 * row['conv_max']:.2f} "
            f"| {100 * row['aconv_mean']:.2f}±{100 * row['aconv_std']:.2f} | {100 * row['aconv_max']:.2f} "
            f"| {row['t']:.2f} | {row['p']:.3g}{star} |")
    lines += ['', f'Peak validation accuracy over epochs, {rows[0]["repeats"]} repeats per cell; two-tailed '
              f'Student t-test of ACONV vs CONV (* p < 0.05); best size = highest ACONV peak: {best_size}×{best_size}.']
    return '\n'.join(lines)


def run_comparison(config: CompareConfig) -> ComparisonResult:
    """ Runs (or, with ``resume``, reads back) every repeat and writes the table and the curves. """
    if PartialState().is_main_process:
        save_config(config, config.output_dir)
    peaks: Dict[str, Dict[int, List[float]]] = {arm: {} for arm in ARMS}
    curves: Dict[str, Dict[int, List[List[float]]]] = {arm: {} for arm in ARMS}
    for size in config.kernel_sizes:
        for arm in ARMS:
            for repeat in range(config.repeats):
                run = _run_config(config, arm, size, repeat)
                history = _finished_history(run) if config.resume else None
                if history is None:  # one process group for all runs (torchrun / accelerate launch)
                    history = train_classification(run, end_training=False)
                accuracy = [record['val_accuracy'] for record in history]
                peaks[arm].setdefault(size, []).append(max(accuracy))
                curves[arm].setdefault(size, []).append(accuracy)
                PartialState().print(f'{arm:5s} k={size} seed={run.seed}: peak validation accuracy {max(accuracy):.4f}', flush=True)
    PartialState().destroy_process_group()
    rows = summarize(peaks)
    best_size = max(config.kernel_sizes, key=lambda size: max(peaks['ACONV'][size]))
    title = f'{config.baseline_model} (CONV) vs {config.model} (ACONV) on {config.dataset}'
    markdown = _markdown(rows, best_size, title)
    files = _write_outputs(config, rows, best_size, markdown, peaks, curves, title, PartialState().is_main_process)
    return ComparisonResult(peaks, curves, rows, best_size, markdown, files)


def _write_outputs(config, rows, best_size, markdown, peaks, curves, title, write: bool) -> List[Path]:
    """ The table as Markdown, CSV and JSON, and the mean curves; files are written only when ``write``. """
    from .plots import plot_mean_curves
    directory = Path(config.output_dir)
    markdown_path, csv_path, json_path, plot_path = (
        directory / name for name in ('comparison.md', 'comparison.csv', 'comparison.json', 'comparison_curves.png'))
    if not write:
        return [markdown_path, csv_path, json_path, plot_path]
    directory.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(markdown + '\n')
    with open(csv_path, 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(dict(
        rows=rows, best_size=best_size,
        peaks={arm: {str(size): values for size, values in by_size.items()} for arm, by_size in peaks.items()}),
        indent=1))
    labelled = {f'{arm} {size}×{size}': np.asarray(curves[arm][size])
                for size in config.kernel_sizes for arm in ARMS}
    plot_mean_curves(labelled, str(plot_path), title=title)
    return [markdown_path, csv_path, json_path, plot_path]
