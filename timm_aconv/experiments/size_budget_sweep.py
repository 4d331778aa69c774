"""The kernel-size budget's trade-off: validation accuracy against deployed latency and kernel FLOPs

Arms, each trained ``repeats`` times (seeds ``seed, seed + 1, …``):

- ``CONV k×k`` for every ``conv_kernel_sizes`` value: the ordinary twin of ``model``
  (``aconv_simple_cnn`` → ``conv_simple_cnn``), deployed as trained;
- ``ACONV``: ``model`` without a budget, and ``ACONV ≤ b`` for every ``budgets`` value: trained
  with ``size_budget=b``; each is deployed as :func:`timm_aconv.export_learned_sizes`
  (``crop_tol``, ``export_strategy``) makes it;
- ``ACONV …, train crop`` for every ``train_crop_budgets`` value (a budget, or null for none): the
  same arm trained at the learned size (``train_crop_tol``), deployed the same way.

Each run's training time (the wall time of its ``fit``: training steps and the per-epoch evaluation)
is kept in ``train_seconds.json`` beside its model.

Measured for every deployed model: its accuracy on the whole validation set; its convolution
multiply-adds per image (forward hooks on every ``nn.Conv2d``) relative to the full-grid ACONV
model (= CONV at ``kernel_size``); and its latency: all deployed models of the sweep are timed in
the same rounds (:func:`timm_aconv.utils.round_robin_latency`) on one validation batch of
``latency_batch`` images, with ``num_threads`` torch threads. Outputs in ``output_dir``:
``size_budget.md`` / ``.csv`` / ``.json`` and ``size_budget.png``. With ``resume=True``,
finished runs are read back (history and ``model.safetensors``) instead of trained, so a rerun
on a quiet machine re-measures only the latencies.
"""

import copy
import csv
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import torch
import torch.nn as nn
from jsonargparse.typing import OpenUnitInterval, PositiveInt
from torch.utils.data import DataLoader

from ..engine.callbacks import Callback
from ..engine.config import ConfigError
from ..engine.config_types import LeftOpenUnitInterval
from ..engine.history import read_history
from ..engine.launch import process_state
from ..layers import OutputPixelTracker, estimated_kernel_flops
from ..surgery import export_learned_sizes, fuse_convs
from ..utils import round_robin_latency
from .classification import ClassificationConfig, build_data, create_classifier, train_classification

__all__ = ['SizeBudgetConfig', 'SweepResult', 'conv_macs', 'run_size_budget_sweep']


@dataclass
class SizeBudgetConfig(ClassificationConfig):
    """A sweep of kernel-size budgets against the unconstrained ACONV model and ordinary CONV models."""

    budgets: List[LeftOpenUnitInterval] = field(default_factory=lambda: [0.5, 0.25, 0.1])
    """kernel-size budgets of the ACONV arms, fractions in (0, 1] of the full grids' kernel FLOPs"""
    repeats: PositiveInt = 3
    """training runs per arm (seeds seed, seed + 1, ...)"""
    conv_kernel_sizes: List[int] = field(default_factory=lambda: [7, 3])
    """kernel sizes of the ordinary CONV arms, odd"""
    crop_tol: OpenUnitInterval = 1e-3
    """energy share each filter may lose when exported at its learned size"""
    export_strategy: Literal['bucketed', 'single', 'auto'] = 'auto'
    """export_learned_sizes strategy: bucketed, single (one crop per layer) or auto (timed)"""
    latency_batch: PositiveInt = 32
    """images per batch of the latency measurement"""
    latency_rounds: PositiveInt = 15
    """round-robin rounds of the latency measurement"""
    latency_clock: Literal['wall', 'cpu'] = 'wall'
    """latency clock: wall, or cpu (this process's CPU time, with num_threads 1: for a machine busy with other work)"""
    train_crop_budgets: List[Optional[LeftOpenUnitInterval]] = field(default_factory=list)
    """budgets (null: none) of extra ACONV arms trained at the learned size with train_crop_tol"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model.startswith('aconv_'):
            raise ConfigError(f'model must be an adaptive timm model with a conv_ twin (aconv_*), got {self.model!r}')
        if self.size_budget is not None:
            raise ConfigError('size_budget is set per arm by the sweep: give budgets instead')
        if self.train_crop_budgets and self.train_crop_tol is None:
            raise ConfigError('train_crop_budgets needs train_crop_tol: the tolerance those arms train with')
        for size in self.conv_kernel_sizes:
            if size < 1 or size % 2 == 0:
                raise ConfigError(f'conv_kernel_sizes must be odd integers, got {self.conv_kernel_sizes}')


@dataclass(frozen=True)
class Arm:
    label: str
    slug: str
    model: str
    kernel_size: Optional[int]
    budget: Optional[float]
    train_crop: bool = False

    @property
    def adaptive(self) -> bool:
        return self.model.startswith('aconv_')


def sweep_arms(config: SizeBudgetConfig) -> List[Arm]:
    """CONV k×k for each of ``conv_kernel_sizes``, ACONV, ACONV ≤ b for each budget, then the arms trained
    at the learned size."""
    twin = 'conv_' + config.model[len('aconv_') :]
    arms = [Arm(f'CONV {k}×{k}', f'conv_k{k}', twin, k, None) for k in config.conv_kernel_sizes]
    arms.append(Arm('ACONV', 'aconv', config.model, config.kernel_size, None))
    arms += [Arm(f'ACONV ≤ {b:g}', f'aconv_budget{b:g}', config.model, config.kernel_size, b) for b in config.budgets]
    for budget in config.train_crop_budgets:
        label, slug = ('ACONV', 'aconv') if budget is None else (f'ACONV ≤ {budget:g}', f'aconv_budget{budget:g}')
        arms.append(Arm(f'{label}, train crop', f'{slug}_train_crop', config.model, config.kernel_size, budget, True))
    return arms


@dataclass
class SweepResult:
    """One row per run and one per arm (means ± std over the seeds), the table, the files."""

    runs: List[Dict]
    arms: List[Dict]
    markdown: str
    files: List[Path]


class _KeepModel(Callback):
    """Keeps a CPU copy of the trained model."""

    def on_fit_end(self, trainer) -> None:
        self.model = copy.deepcopy(trainer.unwrapped_model).cpu().eval()


def conv_macs(model: nn.Module, images: torch.Tensor) -> float:
    """Multiply-adds per image of every ``nn.Conv2d`` of ``model`` in one forward pass of ``images``."""
    total = [0.0]

    def count(module, _inputs, output):
        kh, kw = module.kernel_size
        total[0] += output[0].numel() * module.in_channels // module.groups * kh * kw

    handles = [module.register_forward_hook(count) for module in model.modules() if isinstance(module, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def _run_config(config: SizeBudgetConfig, arm: Arm, seed: int) -> ClassificationConfig:
    values = {field_.name: getattr(config, field_.name) for field_ in dataclasses.fields(ClassificationConfig)}
    values.update(
        model=arm.model,
        kernel_size=arm.kernel_size,
        size_budget=arm.budget,
        train_crop_tol=config.train_crop_tol if arm.train_crop else None,
        seed=seed,
        plots=False,
        resume=False,
        output_dir=str(Path(config.output_dir) / arm.slug / f'seed{seed}'),
    )
    return ClassificationConfig(**values)


def _validation_set(run: ClassificationConfig):
    """The run's validation set as its training evaluated it (its split seed and input normalization),
    and the dataset's info."""
    _, val_set, info = build_data(run)
    return val_set, info


TRAIN_SECONDS = 'train_seconds.json'


def _read_back(run: ClassificationConfig, info) -> Optional[Tuple[List[Dict], nn.Module, float]]:
    """A finished run's history, model and training time, or None."""
    weights = Path(run.output_dir) / 'model.safetensors'
    timing = Path(run.output_dir) / TRAIN_SECONDS
    try:
        history = read_history(run.output_dir)
    except FileNotFoundError:
        return None
    if len(history) != run.epochs or not weights.is_file() or not timing.is_file():
        return None
    from safetensors.torch import load_file

    model = create_classifier(run, info)
    model.load_state_dict(load_file(str(weights)))
    return history, model.eval(), json.loads(timing.read_text())['train_seconds']


def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
            total += len(labels)
    return correct / total


def _mean_std(values: List[float]) -> Tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run_size_budget_sweep(config: SizeBudgetConfig) -> SweepResult:
    """Trains (or reads back) every run, exports the ACONV models, measures them, writes table and plot."""
    state = process_state(config.cpu)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)  # the Trainer does it too, but resumed runs build none
    deployed: Dict[str, nn.Module] = {}
    runs: List[Dict] = []
    reference_macs = latency_images = None
    for arm in sweep_arms(config):
        for repeat in range(config.repeats):
            run = _run_config(config, arm, config.seed + repeat)
            val_set, info = _validation_set(run)
            val_loader = DataLoader(val_set, batch_size=256, shuffle=False)
            if latency_images is None:  # one batch for every model's latency
                latency_images = next(iter(DataLoader(val_set, batch_size=config.latency_batch, shuffle=False)))[0]
            finished = _read_back(run, info) if config.resume else None
            if finished is None:
                keep = _KeepModel()
                start = time.perf_counter()
                history = train_classification(run, callbacks=[keep], end_training=False)
                seconds = time.perf_counter() - start
                if state.is_main_process:
                    (Path(run.output_dir) / TRAIN_SECONDS).write_text(json.dumps(dict(train_seconds=seconds)))
                finished = history, keep.model, seconds
            history, model, seconds = finished
            row = dict(
                arm=arm.label,
                budget=arm.budget,
                train_crop_tol=run.train_crop_tol,
                seed=run.seed,
                train_seconds=seconds,
                peak_val_accuracy=max(record['val_accuracy'] for record in history),
                final_val_accuracy=history[-1]['val_accuracy'],
            )
            if arm.adaptive:
                if reference_macs is None:
                    reference_macs = conv_macs(fuse_convs(copy.deepcopy(model)), latency_images)
                pixels = OutputPixelTracker(model)
                with torch.no_grad():
                    model(latency_images[:1])
                row['estimated_kernel_flops'] = float(
                    estimated_kernel_flops(model, config.crop_tol, output_pixels=pixels).detach()
                )
                pixels.remove()
                with torch.no_grad():
                    logits = model(latency_images)
                model = export_learned_sizes(
                    model, config.crop_tol, strategy=config.export_strategy, example_inputs=latency_images
                )
                with torch.no_grad():
                    row['export_error'] = float((model(latency_images) - logits).norm() / logits.norm())
            row['deployed_val_accuracy'] = _accuracy(model, val_loader)
            row['macs'] = conv_macs(model, latency_images)
            deployed[f'{arm.label} seed {run.seed}'] = model
            runs.append(row)
            state.print(
                f'{arm.label:12s} seed={run.seed}: deployed validation accuracy {row["deployed_val_accuracy"]:.4f}',
                flush=True,
            )
    state.destroy_process_group()
    for row in runs:
        row['kernel_flops'] = row['macs'] / reference_macs
    latency = round_robin_latency(
        {name: _forward(model, latency_images) for name, model in deployed.items()},
        rounds=config.latency_rounds,
        clock=config.latency_clock,
    )
    for row, name in zip(runs, deployed):
        row['latency_ms'], row['latency_ratio'] = latency[name].ms, latency[name].ratio
    arms = _summarize(runs)
    markdown = _markdown(config, arms)
    files = _write_outputs(config, runs, arms, markdown, state.is_main_process)
    return SweepResult(runs, arms, markdown, files)


def _forward(model: nn.Module, images: torch.Tensor):
    def run():
        with torch.no_grad():
            return model(images)

    return run


def _summarize(runs: List[Dict]) -> List[Dict]:
    arms = []
    for label in dict.fromkeys(row['arm'] for row in runs):
        rows = [row for row in runs if row['arm'] == label]
        summary = dict(arm=label, budget=rows[0]['budget'], runs=len(rows))
        for key in (
            'deployed_val_accuracy',
            'final_val_accuracy',
            'peak_val_accuracy',
            'kernel_flops',
            'latency_ms',
            'latency_ratio',
            'train_seconds',
        ):
            summary[key], summary[f'{key}_std'] = _mean_std([row[key] for row in rows])
        if 'estimated_kernel_flops' in rows[0]:
            summary['estimated_kernel_flops'] = statistics.fmean(row['estimated_kernel_flops'] for row in rows)
            summary['max_export_error'] = max(row['export_error'] for row in rows)
        arms.append(summary)
    return arms


def _markdown(config: SizeBudgetConfig, arms: List[Dict]) -> str:
    reference = arms[0]['arm']
    lines = [
        f'### Kernel-size budgets: {config.model} on {config.dataset}',
        '',
        '| arm | runs | val. accuracy deployed (%) | before export (%) | kernel FLOPs measured / from σ | '
        f'latency (ms) | latency / {reference} | export error (max) | training time (s) |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for arm in arms:
        adaptive = 'estimated_kernel_flops' in arm
        estimate = f' / {arm["estimated_kernel_flops"]:.3f}' if adaptive else ''
        error = f'{arm["max_export_error"]:.1e}' if adaptive else '–'
        lines.append(
            f'| {arm["arm"]} | {arm["runs"]} | {100 * arm["deployed_val_accuracy"]:.2f}±'
            f'{100 * arm["deployed_val_accuracy_std"]:.2f} | {100 * arm["final_val_accuracy"]:.2f}±'
            f'{100 * arm["final_val_accuracy_std"]:.2f} | {arm["kernel_flops"]:.3f}{estimate} | '
            f'{arm["latency_ms"]:.2f}±{arm["latency_ms_std"]:.2f} | {arm["latency_ratio"]:.3f} | {error} | '
            f'{arm["train_seconds"]:.1f}±{arm["train_seconds_std"]:.1f} |'
        )
    lines += [
        '',
        f'{config.epochs} epochs per run, seeds {config.seed}..{config.seed + config.repeats - 1} '
        f'(mean±std over seeds); accuracy on the whole validation set after the last epoch, of the deployed '
        f'model and of the trained model before export; ACONV arms deployed with '
        f"export_learned_sizes(crop_tol={config.crop_tol:g}, strategy='{config.export_strategy}'); kernel "
        f'FLOPs = convolution multiply-adds relative to the full {config.kernel_size or "default"}-grid '
        f'model, measured on the deployed model and estimated from sigma before export; export error = '
        f'relative L2 error of the logits, exported vs adaptive; latency = median forward time of a batch of '
        f'{config.latency_batch} validation images, every model timed in the same {config.latency_rounds} '
        f'rounds ({config.latency_clock} clock), {torch.get_num_threads()} torch thread(s); training time = '
        f"wall time of each run's training (its steps and per-epoch evaluation)"
        + (
            f'; "train crop": trained at the learned size, train_crop_tol={config.train_crop_tol:g}.'
            if config.train_crop_budgets
            else '.'
        ),
    ]
    return '\n'.join(lines)


def _write_outputs(config, runs, arms, markdown, write: bool) -> List[Path]:
    directory = Path(config.output_dir)
    paths = [directory / name for name in ('size_budget.md', 'size_budget.csv', 'size_budget.json', 'size_budget.png')]
    if not write:
        return paths
    markdown_path, csv_path, json_path, plot_path = paths
    directory.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(markdown + '\n')
    with open(csv_path, 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=list(dict.fromkeys(key for row in runs for key in row)))
        writer.writeheader()
        writer.writerows(runs)
    json_path.write_text(json.dumps(dict(runs=runs, arms=arms, threads=torch.get_num_threads()), indent=1))
    from .figures import plot_size_budget_tradeoff

    plot_size_budget_tradeoff(runs, arms, str(plot_path), title=markdown.splitlines()[0].lstrip('# '))
    return paths
