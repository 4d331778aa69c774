"""The paper's comparison protocol (Algorithm 1): CONV vs ACONV over kernel sizes and repeats

For each kernel size n and each arm (CONV: ``baseline_model``; ACONV: ``model``, converted
with :func:`timm_aconv.convert_convs` when ``convert=True``), train ``repeats`` times with seeds
``seed, seed + 1, …`` and keep each run's *peak* validation accuracy over epochs. Repeat r of both
arms uses seed ``seed + r``; datasets without an official split (digits, synthetic, LFW) draw a
new train/validation split per repeat from it (Algorithm 1's ``split(dataset)`` inside the repeat
loop), unless ``split_seed`` fixes one.

The table (:mod:`~timm_aconv.engine.statistics`) gives per size mean ± std (ddof=1) and max of
each arm's peaks, the two-tailed Student t-test of ACONV against CONV (the paper's test), its
Holm-corrected p-value over the sizes tested, and Cohen's d; a last row compares the best CONV
size with the best ACONV size. The *best size* is the size of the highest peak over both arms
(paper section 4.3 and the authors' plotting script), a rule that favours neither arm.

Outputs in ``output_dir``: ``comparison.md`` / ``.csv`` / ``.json``, ``comparison_curves.png``
(mean validation accuracy per epoch with ±1 std bands, the paper's Figures 5–6),
``settings.yaml`` (the resolved settings of every run), ``config.yaml`` (the comparison's own
resolved settings: ``--config`` on it reruns the comparison) and ``learned_sizes.md`` / ``.json``: the
kernel size each filter of the ACONV arm learned (:func:`timm_aconv.learned_kernel_sizes` of each
run's best model, :func:`learned_sizes_table`). Each run keeps its own directory
``<arm>_k<n>/seed<seed>``; with ``resume=True`` finished runs are read back, not re-run, and an interrupted run
continues from its newest complete checkpoint (with the same results as an uninterrupted one).
"""

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import timm
from accelerate import PartialState

from ..engine.config import ConfigError, save_config
from ..engine.config_types import AtLeastTwo
from ..engine.history import read_history
from ..engine.launch import process_state
from ..engine.output_dir import latest_checkpoint
from ..layers import DEFAULT_CROP_TOL
from ..surgery import learned_kernel_sizes
from .classification import ClassificationConfig, data_split_seed, train_classification
from .settings import write_settings
from .statistics import STD_DDOF, cohens_d, describe_peaks, holm_adjust, ttest_peaks

__all__ = [
    'ARMS',
    'CIFAR_RESNET_KERNEL_SIZES',
    'PAPER_KERNEL_SIZES',
    'CompareConfig',
    'ComparisonResult',
    'best_sizes',
    'best_versus_best',
    'comparison_markdown',
    'learned_sizes_table',
    'run_comparison',
    'run_config',
    'summarize',
]

ARMS = ('CONV', 'ACONV')
PAPER_KERNEL_SIZES = [3, 5, 7, 9]  # the paper's simple-CNN comparisons (Table 2)
CIFAR_RESNET_KERNEL_SIZES = [3, 5, 7]  # what the authors' ResNet scripts ran (Table 3 has no 9×9)
# comparison.csv: one line per size, then the best-vs-best line (conv_size, aconv_size instead of kernel_size)
CSV_COLUMNS = [
    'kernel_size',
    'conv_size',
    'aconv_size',
    'conv_mean',
    'conv_std',
    'conv_max',
    'aconv_mean',
    'aconv_std',
    'aconv_max',
    't',
    'p',
    'p_holm',
    'd',
    'repeats',
]


@dataclass
class CompareConfig(ClassificationConfig):
    """Algorithm 1: CONV (baseline_model) vs ACONV (model) per kernel size, repeats seeds each.

    kernel_size is replaced by each of kernel_sizes; split_seed null (the default) draws a new
    train/validation split per repeat for digits, synthetic and lfw, from the repeat's seed.
    """

    baseline_model: Optional[str] = None
    """the CONV arm's timm model; null: the conv_ twin of model (or model itself with convert)"""
    kernel_sizes: Optional[List[int]] = None
    """kernel sizes to compare, odd >= 3, e.g. 3,5,7,9; null: 3,5,7 for the CIFAR ResNets (as the authors ran
    them), else the paper's 3,5,7,9"""
    repeats: AtLeastTwo = 5
    """training runs per arm and kernel size, for the t-test (seeds seed, seed + 1, ...)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.baseline_model is None:
            if self.convert:
                self.baseline_model = self.model
            elif self.model.startswith('aconv_'):
                self.baseline_model = 'conv_' + self.model[len('aconv_') :]
            else:
                raise ConfigError(
                    f'baseline_model is needed: {self.model!r} has no conv_ twin; set baseline_model, '
                    'or convert=True to compare the model with its converted self'
                )
        if self.kernel_sizes is None:
            cifar_resnet = self.model.startswith(('aconv_resnet', 'conv_resnet')) and not self.convert
            self.kernel_sizes = list(CIFAR_RESNET_KERNEL_SIZES if cifar_resnet else PAPER_KERNEL_SIZES)
        if self.push_to_hub is not None:
            raise ConfigError(
                'push_to_hub pushes the model of one training run (recipes/train_classification.py); '
                'a comparison trains many'
            )
        if not self.kernel_sizes:
            raise ConfigError('kernel_sizes must list at least one kernel size, e.g. [3, 5, 7, 9]')
        for size in self.kernel_sizes:
            if size < 3 or size % 2 == 0:
                raise ConfigError(f'kernel_sizes must be odd integers >= 3, got {self.kernel_sizes}')
        if len(set(self.kernel_sizes)) != len(self.kernel_sizes):
            raise ConfigError(f'kernel_sizes must not repeat, got {self.kernel_sizes}')


@dataclass
class ComparisonResult:
    """Peak accuracies ``peaks[arm][size]`` (one per repeat), curves, the table's rows and best sizes."""

    peaks: Dict[str, Dict[int, List[float]]]
    curves: Dict[str, Dict[int, List[List[float]]]]
    rows: List[Dict[str, Any]]
    best_row: Dict[str, Any]
    best_size: int
    markdown: str
    files: List[Path]
    learned_sizes: Optional[str] = None  # the Markdown of learned_sizes.md (None: no adaptive run)


def run_config(config: CompareConfig, arm: str, size: int, repeat: int) -> ClassificationConfig:
    """The resolved settings of one run: ``arm`` ('CONV' or 'ACONV'), kernel ``size``, repeat
    ``repeat`` (seed ``seed + repeat``; the split seed resolved as :func:`data_split_seed` does)."""
    if arm not in ARMS:
        raise ValueError(f'arm must be one of {ARMS}, got {arm!r}')
    values = {field_.name: getattr(config, field_.name) for field_ in dataclasses.fields(ClassificationConfig)}
    adaptive = arm == 'ACONV'
    seed = config.seed + repeat
    values.update(
        model=config.model if adaptive else config.baseline_model,
        convert=config.convert and adaptive,
        kernel_size=size,
        seed=seed,
        output_dir=str(Path(config.output_dir) / f'{arm.lower()}_k{size}' / f'seed{seed}'),
        plots=False,
        resume=False,
        push_to_hub=None,
    )
    run = ClassificationConfig(**values)
    run.split_seed = data_split_seed(run)
    return run


def _finished_history(run: ClassificationConfig) -> Optional[List[Dict[str, float]]]:
    try:
        history = read_history(run.output_dir)
    except FileNotFoundError:
        return None
    return history if len(history) == run.epochs else None


def _test_row(conv_peaks: List[float], aconv_peaks: List[float]) -> Dict[str, Any]:
    conv, aconv = describe_peaks(conv_peaks), describe_peaks(aconv_peaks)
    t_stat, p_value = ttest_peaks(aconv_peaks, conv_peaks)
    return dict(
        conv_mean=conv['mean'],
        conv_std=conv['std'],
        conv_max=conv['max'],
        aconv_mean=aconv['mean'],
        aconv_std=aconv['std'],
        aconv_max=aconv['max'],
        t=t_stat,
        p=p_value,
        d=cohens_d(aconv_peaks, conv_peaks),
        repeats=aconv['repeats'],
    )


def best_sizes(peaks: Dict[str, Dict[int, List[float]]]) -> Dict[str, int]:
    """The size of the highest peak of each arm ('CONV', 'ACONV') and over both arms ('both'); a tie
    goes to the size listed first."""
    sizes = list(peaks['ACONV'])
    best = {arm: max(sizes, key=lambda size: max(peaks[arm][size])) for arm in ARMS}
    best['both'] = max(sizes, key=lambda size: max(max(peaks['CONV'][size]), max(peaks['ACONV'][size])))
    return best


def summarize(peaks: Dict[str, Dict[int, List[float]]]) -> List[Dict[str, Any]]:
    """One row per kernel size: mean, std (ddof=1), max per arm; t, two-tailed p, Cohen's d (ACONV
    vs CONV); ``p_holm``: p Holm-corrected over the sizes (one test per size)."""
    rows = [dict(kernel_size=size, **_test_row(peaks['CONV'][size], peaks['ACONV'][size])) for size in peaks['ACONV']]
    for row, adjusted in zip(rows, holm_adjust([row['p'] for row in rows])):
        row['p_holm'] = adjusted
    return rows


def best_versus_best(peaks: Dict[str, Dict[int, List[float]]]) -> Dict[str, Any]:
    """The row comparing the best CONV size's peaks with the best ACONV size's (its own t-test)."""
    best = best_sizes(peaks)
    return dict(
        conv_size=best['CONV'],
        aconv_size=best['ACONV'],
        **_test_row(peaks['CONV'][best['CONV']], peaks['ACONV'][best['ACONV']]),
    )


def _number(value: Optional[float], spec: str) -> str:
    return '–' if value is None else format(value, spec)


def _cells(row: Dict[str, Any], holm: bool) -> str:
    star = '*' if row['p'] is not None and row['p'] < 0.05 else ''
    holm_cell = _number(row.get('p_holm'), '.3g') if holm else '–'
    return (
        f'| {100 * row["conv_mean"]:.2f}±{100 * row["conv_std"]:.2f} | {100 * row["conv_max"]:.2f} '
        f'| {100 * row["aconv_mean"]:.2f}±{100 * row["aconv_std"]:.2f} | {100 * row["aconv_max"]:.2f} '
        f'| {_number(row["t"], ".2f")} | {_number(row["p"], ".3g")}{star} | {holm_cell} '
        f'| {_number(row["d"], ".2f")} |'
    )


def _size(size: int, dims: int) -> str:
    return '×'.join([str(size)] * dims)


def comparison_markdown(
    rows: List[Dict[str, Any]], best_row: Dict[str, Any], best_size: int, title: str, dims: int = 2
) -> str:
    """The table of :func:`summarize`'s ``rows`` and :func:`best_versus_best`'s ``best_row``, with its
    footnote; ``dims``: the kernels' dimensions (sizes read ``9×9`` in 2-D, ``9`` in 1-D)."""
    lines = [
        f'### {title}',
        '',
        '| kernel | CONV mean±std (%) | CONV max (%) | ACONV mean±std (%) | ACONV max (%) | t | p | p (Holm) | d |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for row in rows:
        best = ' (best)' if row['kernel_size'] == best_size else ''
        lines.append(f'| {_size(row["kernel_size"], dims)}{best} {_cells(row, holm=True)}')
    conv_size, aconv_size = _size(best_row['conv_size'], dims), _size(best_row['aconv_size'], dims)
    lines.append(f'| best CONV {conv_size} vs best ACONV {aconv_size} {_cells(best_row, holm=False)}')
    lines += [
        '',
        f'Peak validation accuracy over epochs, {rows[0]["repeats"]} repeats per cell, '
        f'std with ddof={STD_DDOF}. '
        "t, p: two-tailed Student t-test of ACONV vs CONV (* p < 0.05), the paper's test; p (Holm): corrected "
        f"for the {len(rows)} sizes tested; d: Cohen's d (pooled std). Best size = the highest peak over both "
        f"arms (the paper's rule, section 4.3): {_size(best_size, dims)}. The last row compares the sizes with "
        'the highest peak of each arm; choosing them after seeing the results makes its p optimistic.',
    ]
    return '\n'.join(lines)


def run_comparison(config: CompareConfig) -> ComparisonResult:
    """Runs (or, with ``resume``, reads back) every repeat and writes the table, curves and settings."""
    if process_state(config.cpu).is_main_process:
        save_config(config, config.output_dir)
    peaks: Dict[str, Dict[int, List[float]]] = {arm: {} for arm in ARMS}
    curves: Dict[str, Dict[int, List[List[float]]]] = {arm: {} for arm in ARMS}
    runs: Dict[str, ClassificationConfig] = {}
    for size in config.kernel_sizes:
        for arm in ARMS:
            for repeat in range(config.repeats):
                run = run_config(config, arm, size, repeat)
                runs[str(Path(run.output_dir).relative_to(config.output_dir))] = run
                history = _finished_history(run) if config.resume else None
                if history is None:  # one process group for all runs (torchrun / accelerate launch)
                    run.resume = config.resume and latest_checkpoint(run.output_dir) is not None
                    history = train_classification(run, end_training=False)
                accuracy = [record['val_accuracy'] for record in history]
                peaks[arm].setdefault(size, []).append(max(accuracy))
                curves[arm].setdefault(size, []).append(accuracy)
                PartialState().print(
                    f'{arm:5s} k={size} seed={run.seed}: peak validation accuracy {max(accuracy):.4f}', flush=True
                )
    PartialState().destroy_process_group()
    rows, best_row, best_size = summarize(peaks), best_versus_best(peaks), best_sizes(peaks)['both']
    title = f'{config.baseline_model} (CONV) vs {config.model} (ACONV) on {config.dataset}'
    markdown = comparison_markdown(rows, best_row, best_size, title)
    files = _write_outputs(
        config, runs, rows, best_row, best_size, markdown, peaks, curves, title, PartialState().is_main_process
    )
    sizes_markdown = None
    if PartialState().is_main_process:
        sizes_markdown, sizes_files = _write_learned_sizes(config, runs)
        files += sizes_files
    return ComparisonResult(peaks, curves, rows, best_row, best_size, markdown, files, sizes_markdown)


def _trained_model_dir(run: ClassificationConfig) -> Path:
    """The best model of a run (``best/``) or, without one, its final model."""
    best = Path(run.output_dir) / 'best'
    return best if (best / 'model.safetensors').is_file() else Path(run.output_dir)


def _size_label(size: Any) -> str:
    return 'x'.join(map(str, size)) if isinstance(size, (tuple, list)) else f'{size}×{size}'


def learned_sizes_table(
    per_run: Dict[int, Dict[int, Dict[str, Any]]], crop_tol: float = DEFAULT_CROP_TOL, monitor: str = 'val_loss'
) -> str:
    """Markdown of the learned kernel sizes ``per_run[kernel_size][seed][layer]`` (each a
    :class:`~timm_aconv.LayerKernelSizes`): per kernel size and layer, how many filters learned each
    size over all repeats, the 95th percentile, and the kernel FLOPs at the learned sizes relative to
    the full grid (mean ± std over the repeats, ddof=1)."""
    lines = [
        f'### Learned kernel sizes of the ACONV arm (crop_tol={crop_tol:g})',
        '',
        '| kernel | layer | filters per learned size, all repeats | p95 | kernel FLOPs vs the full grid (%) |',
        '|---|---|---|---|---|',
    ]
    for kernel_size, by_seed in per_run.items():
        layers = list(next(iter(by_seed.values())))
        for layer in layers:
            rows = [by_seed[seed][layer] for seed in by_seed]
            sizes = [size for row in rows for size in row.sizes]
            counts = dict.fromkeys(sorted(set(sizes), key=lambda size: (np.prod(size), size)), 0)
            for size in sizes:
                counts[size] += 1
            flops = 100 * np.asarray([row.kernel_flops for row in rows])
            spread = f'±{flops.std(ddof=STD_DDOF):.1f}' if len(flops) > 1 else ''
            p95 = np.percentile(np.asarray(sizes), 95, method='higher', axis=0)
            p95 = tuple(int(value) for value in p95) if np.ndim(p95) else int(p95)
            lines.append(
                f'| {_size_label(kernel_size)} | {layer} | '
                + ', '.join(f'{_size_label(size)}: {count}' for size, count in counts.items())
                + f' | {_size_label(p95)} | {flops.mean():.1f}{spread} |'
            )
    lines += [
        '',
        f"Each filter's learned size: the smallest centred window that keeps all but {crop_tol:g} of its product "
        f"kernel's energy (timm_aconv.learned_kernel_sizes), in the best model of each run (by {monitor}), "
        f'{len(next(iter(per_run.values())))} repeats per kernel size.',
    ]
    return '\n'.join(lines)


def _write_learned_sizes(config: CompareConfig, runs: Dict[str, ClassificationConfig]):
    """``learned_sizes.md`` / ``.json`` from the ACONV runs' saved models; (None, []) when they have no
    adaptive layer."""
    per_run: Dict[int, Dict[int, Dict[str, Any]]] = {}
    for run in runs.values():
        if run.model != config.model or run.convert != config.convert:
            continue  # a CONV run
        model = timm.create_model(f'local-dir:{_trained_model_dir(run)}', pretrained=True)
        try:
            sizes = learned_kernel_sizes(model, crop_tol=DEFAULT_CROP_TOL)
        except ValueError:  # no adaptive layer: the "ACONV" arm is an ordinary model
            return None, []
        per_run.setdefault(run.kernel_size, {})[run.seed] = dict(sizes)
    if not per_run:
        return None, []
    markdown = learned_sizes_table(per_run, DEFAULT_CROP_TOL, config.monitor)
    document = dict(
        crop_tol=DEFAULT_CROP_TOL,
        model='best',
        runs={
            str(kernel_size): {
                f'seed{seed}': {
                    name: dict(
                        sizes=[list(size) if isinstance(size, tuple) else size for size in row.sizes],
                        kernel_flops=row.kernel_flops,
                    )
                    for name, row in layers.items()
                }
                for seed, layers in by_seed.items()
            }
            for kernel_size, by_seed in per_run.items()
        },
    )
    directory = Path(config.output_dir)
    (directory / 'learned_sizes.md').write_text(markdown + '\n')
    (directory / 'learned_sizes.json').write_text(json.dumps(document, indent=1))
    return markdown, [directory / 'learned_sizes.md', directory / 'learned_sizes.json']


def _write_outputs(config, runs, rows, best_row, best_size, markdown, peaks, curves, title, write: bool) -> List[Path]:
    """The table as Markdown, CSV and JSON, the mean curves and the settings; written only when ``write``."""
    from .training_plots import plot_mean_curves

    directory = Path(config.output_dir)
    names = ('comparison.md', 'comparison.csv', 'comparison.json', 'comparison_curves.png', 'settings.yaml')
    markdown_path, csv_path, json_path, plot_path, settings_path = (directory / name for name in names)
    files = [markdown_path, csv_path, json_path, plot_path, settings_path]
    if not write:
        return files
    directory.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(markdown + '\n')
    with open(csv_path, 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        writer.writerow(best_row)
    json_path.write_text(
        json.dumps(
            dict(
                rows=rows,
                best_versus_best=best_row,
                best_size=best_size,
                std_ddof=STD_DDOF,
                peaks={arm: {str(size): values for size, values in by_size.items()} for arm, by_size in peaks.items()},
            ),
            indent=1,
        )
    )
    labelled = {f'{arm} {size}×{size}': np.asarray(curves[arm][size]) for size in config.kernel_sizes for arm in ARMS}
    plot_mean_curves(labelled, str(plot_path), title=title)
    write_settings(settings_path, config, runs)
    return files
