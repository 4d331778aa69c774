""" The training engine shared by every recipe: :class:`Trainer` and :class:`EngineConfig` (Accelerate)

One loop for any task whose batches are ``(inputs, targets)`` (or a ``forward_fn``): Accelerate
prepares model, optimizer and loaders (CPU, one or many GPUs, ``accelerate launch`` or ``torchrun``;
multi-process CPU runs need ``cpu=True``). Per real optimizer step: clip by value (the paper's Keras
``clipvalue``, sigma too) and/or norm, the optimizer over :func:`timm_aconv.param_groups`, the sigma
clamp (:func:`timm_aconv.register_sigma_clamp`), a per-step scheduler; an optional kernel-size budget
adds ``size_budget_weight * timm_aconv.size_penalty(model, size_budget)`` to the loss. Per epoch:
evaluation through a :class:`~timm_aconv.train.metrics.Metric` with ``gather_for_metrics`` (each
validation sample once on any number of processes), a metrics row (``metrics.csv``/``.json``,
trackers, one printed line), the best model by ``monitor`` in ``output_dir/best``, and Accelerate
checkpoints in ``output_dir/checkpoints`` (the last ``keep_checkpoints``; a save counts once its
``trainer_state.json`` is written, so ``resume`` continues from the newest complete one with identical
results). ``compile='auto'`` compiles the model in place on CUDA devices (``compile_mode``:
torch.compile's mode, e.g. ``reduce-overhead`` for CUDA graphs); the model's adaptive layers are
grouped (:func:`timm_aconv.group_adaptive_layers`), so that a training step computes their product
kernels together, eager or compiled.

Also here: the launcher checks (:func:`check_process_count`, :func:`process_state`), the refusal to
write over a finished run (:func:`check_output_dir`) and the per-epoch line (:func:`epoch_line`).
The README's "The engine from Python" shows the API on a classification task and what another task
needs (a loss, a ``Metric``, optionally ``save_model_fn``).
"""
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import DynamoBackend, ProjectConfiguration, parse_flag_from_env, set_seed
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm.auto import tqdm

from ..layers import (
    OutputPixelTracker, adaptive_layers, group_adaptive_layers, param_groups, register_sigma_clamp, size_penalty)
from .callbacks import Callback
from .config import ConfigError, config_to_dict, save_config
from .history import write_history
from .metrics import Metric
from .schedulers import create_scheduler

__all__ = ['EngineConfig', 'Trainer', 'set_seed', 'create_optimizer', 'latest_checkpoint', 'check_output_dir',
           'check_process_count', 'expected_process_count', 'process_state', 'epoch_line']

ForwardFn = Callable[[nn.Module, Any], Tuple[torch.Tensor, torch.Tensor]]
SaveModelFn = Callable[[nn.Module, Path], None]

TRAINER_STATE = 'trainer_state.json'  # written last: a checkpoint folder with it is complete
_CHECKPOINT_NAME = re.compile(r'checkpoint_(\d+)')
# torch.compile's modes (reduce-overhead: CUDA graphs of the compiled forward and backward)
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


@dataclass
class EngineConfig:
    """ Training-loop settings (recipes subclass this with their model and data fields). """
    output_dir: str = 'runs/default'
    epochs: int = 10
    optimizer: Literal['sgd', 'adam', 'adamw'] = 'sgd'
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    sigma_lr_scale: float = 1.0
    clip_value: Optional[float] = 1.0
    clip_norm: Optional[float] = None
    scheduler: Literal['constant', 'plateau', 'one_cycle'] = 'plateau'
    monitor: str = 'val_loss'
    monitor_mode: Literal['min', 'max'] = 'min'
    plateau_factor: float = 0.9
    plateau_patience: int = 10
    plateau_cooldown: int = 10
    min_lr: float = 1e-5
    one_cycle_floor_lr: float = 1e-4
    grad_accum_steps: int = 1
    max_steps_per_epoch: Optional[int] = None
    mixed_precision: Literal['no', 'fp16', 'bf16'] = 'no'
    cpu: bool = False  # force CPU; multi-process CPU runs (torchrun/gloo) need it, like `accelerate launch --cpu`
    seed: int = 0
    deterministic: bool = False
    resume: bool = False
    overwrite: bool = False  # recipes refuse an output_dir holding a run unless resume or overwrite
    save_every: int = 1
    keep_checkpoints: int = 2
    save_best: bool = True
    log_with: Literal['auto', 'none', 'tensorboard', 'wandb', 'mlflow', 'comet_ml', 'aim', 'clearml', 'dvclive'] = 'auto'
    progress: bool = True
    print_epochs: bool = True
    num_threads: Optional[int] = None
    compile: Union[Literal['auto'], bool] = 'auto'  # torch.compile the model; 'auto': on a CUDA device
    compile_mode: Optional[str] = None  # torch.compile mode: null (default), reduce-overhead (CUDA graphs), ...
    size_budget: Optional[float] = None  # kernel FLOPs of the adaptive layers, relative to full grids; null: none
    size_budget_weight: float = 0.1  # higher: lands faster but further below the budget

    def __post_init__(self) -> None:
        positive_ints = ('epochs', 'grad_accum_steps')
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ConfigError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('lr', 'sigma_lr_scale', 'plateau_factor'):
            if getattr(self, name) <= 0:
                raise ConfigError(f'{name} must be > 0, got {getattr(self, name)}')
        for name in ('weight_decay', 'momentum', 'min_lr', 'one_cycle_floor_lr', 'plateau_patience',
                     'plateau_cooldown', 'save_every'):
            if getattr(self, name) < 0:
                raise ConfigError(f'{name} must be >= 0, got {getattr(self, name)}')
        for name in ('clip_value', 'clip_norm'):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f'{name} must be > 0 or null (no clipping), got {getattr(self, name)}')
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f'num_threads must be >= 1 or null (torch default), got {self.num_threads}')
        if self.max_steps_per_epoch is not None and (
                self.max_steps_per_epoch < 1 or self.max_steps_per_epoch % self.grad_accum_steps):
            raise ConfigError(
                f'max_steps_per_epoch must be a positive multiple of grad_accum_steps={self.grad_accum_steps} '
                f'(it counts batches), got {self.max_steps_per_epoch}')
        if self.plateau_factor >= 1:
            raise ConfigError(f'plateau_factor must be in (0, 1), got {self.plateau_factor}')
        if self.keep_checkpoints < 2:
            raise ConfigError(f'keep_checkpoints must be >= 2 (Accelerate deletes the oldest checkpoint before it writes '
                              f'the next, so with 1 an interrupted save leaves none), got {self.keep_checkpoints}')
        if not (isinstance(self.compile, bool) or self.compile == 'auto'):
            raise ConfigError(f"compile must be 'auto', true or false, got {self.compile!r}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f'compile_mode must be null or one of {", ".join(COMPILE_MODES)}, got {self.compile_mode!r}')
        if self.size_budget is not None and not 0 < self.size_budget <= 1:
            raise ConfigError(f'size_budget must be in (0, 1] (kernel FLOPs relative to the full grids) or null, '
                              f'got {self.size_budget}')
        if self.size_budget_weight <= 0:
            raise ConfigError(f'size_budget_weight must be > 0, got {self.size_budget_weight}')


def check_output_dir(output_dir: str, resume: bool = False, overwrite: bool = False) -> None:
    """ A :class:`ConfigError` when ``output_dir`` already holds files (a previous run) and neither
    ``resume`` nor ``overwrite`` says what to do with them; recipes call it before training, on every
    process, before any of them writes. """
    directory = Path(output_dir)
    if resume or overwrite or not directory.is_dir() or next(directory.iterdir(), None) is None:
        return
    held = sorted(path.name + ('/' if path.is_dir() else '') for path in directory.iterdir())
    shown = ', '.join(held[:4]) + (', ...' if len(held) > 4 else '')
    raise ConfigError(f'output_dir {str(directory)!r} already holds a run ({shown}): add --resume to continue it, '
                      f'--overwrite to replace it, or choose another --output_dir')


def _launcher_process_count() -> Optional[int]:
    """ How many processes the launcher asked for, when it says so (torchrun's WORLD_SIZE), or -1
    for ``accelerate launch --num_processes N`` without --multi_gpu (its simple launcher sets
    MASTER_PORT for N > 1 but starts one process), else None. """
    if 'WORLD_SIZE' in os.environ:
        return int(os.environ['WORLD_SIZE'])
    mpi_sizes = ('PMI_SIZE', 'OMPI_COMM_WORLD_SIZE', 'MV2_COMM_WORLD_SIZE')  # mpirun: Accelerate's multi-CPU mode
    if 'ACCELERATE_USE_CPU' in os.environ and 'MASTER_PORT' in os.environ and not any(
            name in os.environ for name in mpi_sizes):
        return -1
    return None


def check_process_count(processes: int) -> None:
    """ A :class:`ConfigError` when the launcher asked for several processes but training would run
    ``processes`` = 1: N copies of a single-process run would train independently into one output_dir.

    :class:`Trainer` calls it twice: before building its Accelerator with the number Accelerate will
    run (:func:`expected_process_count`; a torchrun process that Accelerate runs alone would first
    wait for the others in a process group), and with the Accelerator's own ``num_processes``.
    """
    if processes != 1:
        return
    requested = _launcher_process_count()
    if requested is not None and requested > 1:
        raise ConfigError(
            f'the launcher started {requested} processes (WORLD_SIZE={requested}) but Accelerate found no GPU for '
            f'them and runs each on its own: add --cpu to train with {requested} processes on CPU, or launch one '
            f'process')
    if requested == -1:
        raise ConfigError(
            'accelerate launch --num_processes N without --multi_gpu started a single process (its simple launcher '
            'cannot start several on CPU): for N processes on CPU run torchrun --standalone --nproc_per_node N '
            '<recipe> ... --cpu')


def expected_process_count(cpu: bool) -> int:
    """ How many processes Accelerate will train with under the current launcher: WORLD_SIZE with
    ``cpu=True`` or an accelerator device (GPU), else one. """
    requested = _launcher_process_count() or 1
    if requested < 1:
        return 1
    has_device = torch.accelerator.is_available() if hasattr(torch, 'accelerator') else torch.cuda.is_available()
    return requested if cpu or has_device else 1


def process_state(cpu: bool = False) -> PartialState:
    """ Accelerate's shared process state, after :func:`check_process_count`: the first code of a run
    that asks for it (data loaders, a comparison's first output) would otherwise wait in a process
    group for launcher processes that Accelerate runs on their own. ``cpu`` as ``EngineConfig.cpu``
    (or ``accelerate launch --cpu``'s ``ACCELERATE_USE_CPU``). """
    cpu = cpu or parse_flag_from_env('ACCELERATE_USE_CPU')
    check_process_count(expected_process_count(cpu))
    return PartialState(cpu=cpu)


def epoch_line(record: Dict[str, float], epochs: int, monitor: str, model: Optional[nn.Module] = None) -> str:
    """ The one line printed per epoch: epoch, train loss, the monitored metric (and its best), the
    first other validation metric, the learning rates and the range of sigma over ``model``'s
    adaptive layers, e.g. (``recipes/configs/digits.yaml``) ``epoch 1/15  train_loss 1.1168
    val_loss 0.2461 (best 0.2461)  val_accuracy 0.9361  lr 0.01  sigma [0.143, 0.534]``. """
    parts = [f'epoch {record["epoch"]}/{epochs}', f'train_loss {record["train_loss"]:.4f}']
    if monitor in record:
        parts.append(f'{monitor} {record[monitor]:.4f} (best {record.get(f"best_{monitor}", record[monitor]):.4f})')
    other = next((key for key in record if key.startswith('val_') and key != monitor and key != 'val_samples'
                  and isinstance(record[key], float)), None)
    if other is not None:
        parts.append(f'{other} {record[other]:.4f}')
    rates = {key[len('lr_'):]: value for key, value in record.items() if key.startswith('lr_')}
    if len(set(rates.values())) == 1:
        parts.append(f'lr {next(iter(rates.values())):.3g}')
    elif rates:
        parts.append(' '.join(f'lr_{name} {value:.3g}' for name, value in rates.items()))
    if model is not None:
        sigmas = [layer.sigma.detach() for layer in adaptive_layers(model)]
        if sigmas:
            sigma = torch.cat([values.flatten().float().cpu() for values in sigmas])
            parts.append(f'sigma [{float(sigma.min()):.3f}, {float(sigma.max()):.3f}]')
    return '  '.join(parts)


def create_optimizer(model: nn.Module, config: EngineConfig) -> torch.optim.Optimizer:
    """ SGD / Adam / AdamW over :func:`timm_aconv.param_groups` (sigma: no weight decay, own lr scale). """
    groups = param_groups(model, weight_decay=config.weight_decay, lr=config.lr, sigma_lr_scale=config.sigma_lr_scale)
    if config.optimizer == 'sgd':
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == 'adam':
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def _default_forward(model: nn.Module, batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = batch
    return model(inputs), targets


def _checkpoint_folders(checkpoints_dir: Path) -> List[Tuple[int, Path]]:
    """ ``(n, folder)`` of every ``checkpoint_<n>`` in ``checkpoints_dir``, oldest first. """
    if not checkpoints_dir.is_dir():
        return []
    found = [(int(match.group(1)), folder) for folder in checkpoints_dir.iterdir()
             if (match := _CHECKPOINT_NAME.fullmatch(folder.name)) and folder.is_dir()]
    return sorted(found)


def latest_checkpoint(output_dir: str) -> Optional[Path]:
    """ The newest complete checkpoint folder of the run in ``output_dir`` (None when there is none). """
    complete = [folder for _, folder in _checkpoint_folders(Path(output_dir) / 'checkpoints')
                if (folder / TRAINER_STATE).is_file()]
    return complete[-1] if complete else None


def _resolve_trackers(log_with: str) -> Optional[List[str]]:
    if log_with == 'none':
        return None
    if log_with == 'auto':
        from accelerate.utils import is_tensorboard_available
        return ['tensorboard'] if is_tensorboard_available() else None
    return [log_with]


class Trainer:
    """ Trains ``model`` on ``train_loader``, evaluating on ``val_loader`` after every epoch.

    Args:
        model: any module; adaptive layers in it get the sigma clamp and sigma param group.
        train_loader: a ``DataLoader`` (shuffle it; Accelerate shards it across processes).
        val_loader: a ``DataLoader`` (not shuffled).
        config: an :class:`EngineConfig` (or a subclass).
        loss_fn: ``loss_fn(outputs, targets)`` → scalar loss.
        metric: a :class:`~timm_aconv.train.metrics.Metric` for evaluation.
        callbacks: :class:`~timm_aconv.train.callbacks.Callback` instances.
        forward_fn: ``forward_fn(model, batch) -> (outputs, targets)``; default unpacks
            ``(inputs, targets)`` and calls ``model(inputs)``.
        optimizer: an optimizer over ``model``'s parameters; default :func:`create_optimizer`.
        accelerator: an existing Accelerator; default one built from ``config``. Checkpoints go to
            ``<its project_dir>/checkpoints`` (automatic naming and ``keep_checkpoints`` are set on it).
        save_model_fn: ``save_model_fn(model, directory)`` writes the trained (unwrapped) model into
            ``directory``: the final model into ``output_dir``, the best into ``output_dir/best``;
            default: its weights as ``model.safetensors`` (``accelerator.save_model``). Runs on the
            main process only.
    """

    def __init__(
            self,
            model: nn.Module,
            train_loader: torch.utils.data.DataLoader,
            val_loader: torch.utils.data.DataLoader,
            config: EngineConfig,
            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            metric: Metric,
            callbacks: Sequence[Callback] = (),
            forward_fn: ForwardFn = _default_forward,
            optimizer: Optional[torch.optim.Optimizer] = None,
            accelerator: Optional[Accelerator] = None,
            save_model_fn: Optional[SaveModelFn] = None,
    ) -> None:
        self.config = config
        self.loss_fn = loss_fn
        self.metric = metric
        self.callbacks = list(callbacks)
        self.forward_fn = forward_fn
        self.save_model_fn = save_model_fn or self._save_weights
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)  # small CPU models: 1 thread avoids spin-wait overhead
        if accelerator is None:
            check_process_count(expected_process_count(config.cpu))
        self.accelerator = accelerator or Accelerator(
            cpu=config.cpu,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.grad_accum_steps,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
            log_with=_resolve_trackers(config.log_with),
            project_config=ProjectConfiguration(project_dir=config.output_dir),
        )
        project = self.accelerator.project_configuration  # checkpoints/checkpoint_<n>, the last N kept
        project.automatic_checkpoint_naming, project.total_limit = True, config.keep_checkpoints
        if project.project_dir is None:
            project.set_directories(config.output_dir)
        check_process_count(self.accelerator.num_processes)
        optimizer = optimizer or create_optimizer(model, config)
        self.clamp_handle = register_sigma_clamp(optimizer, model)
        group_adaptive_layers(model)  # product kernels computed together (registered models are grouped already)
        if self._should_compile():
            # in place: same parameters, state-dict keys and checkpoints as eager
            model.compile(**({} if self.config.compile_mode is None else dict(mode=self.config.compile_mode)))
        self.output_pixels = None  # per adaptive layer, for the size budget's FLOPs weights
        if config.size_budget is not None:
            if next(adaptive_layers(model), None) is None:
                raise ConfigError(f'size_budget={config.size_budget} needs a model with adaptive layers, and '
                                  f'{type(model).__name__} has none')
            self.output_pixels = OutputPixelTracker(model)
        self.model, self.optimizer, self.train_loader, self.val_loader = self.accelerator.prepare(
            model, optimizer, train_loader, val_loader)
        self.steps_per_epoch = self._optimizer_steps_per_epoch()
        self.scheduler = create_scheduler(
            config.scheduler, self.optimizer.optimizer, total_steps=self.steps_per_epoch * config.epochs,
            floor_lr=config.one_cycle_floor_lr, plateau_mode=config.monitor_mode,
            plateau_factor=config.plateau_factor, plateau_patience=config.plateau_patience,
            plateau_cooldown=config.plateau_cooldown, min_lr=config.min_lr)
        self.epoch = 0  # epochs completed
        self.global_step = 0  # real optimizer steps taken
        self.history: List[Dict[str, float]] = []
        self.should_stop = False  # a callback sets it to end training after the current epoch

    # ---- properties users and callbacks read
    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def unwrapped_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def checkpoints_dir(self) -> Path:
        """ Where ``checkpoint_<n>`` folders go (Accelerate's automatic checkpoint naming). """
        return Path(self.accelerator.project_dir) / 'checkpoints'

    @property
    def best_dir(self) -> Path:
        """ The best model by ``monitor`` so far (``save_best``). """
        return Path(self.config.output_dir) / 'best'

    def _should_compile(self) -> bool:
        if self.accelerator.state.dynamo_plugin.backend != DynamoBackend.NO:
            return False  # Accelerate compiles in prepare() (accelerate launch --dynamo_backend ...)
        if self.config.compile == 'auto':
            return self.accelerator.device.type == 'cuda'
        return self.config.compile

    def _optimizer_steps_per_epoch(self) -> int:
        batches = len(self.train_loader)
        if self.config.max_steps_per_epoch is not None:
            batches = min(batches, self.config.max_steps_per_epoch)
        return max(1, math.ceil(batches / self.config.grad_accum_steps))

    # ---- the loop
    def fit(self, end_training: bool = True) -> List[Dict[str, float]]:
        """ Trains for ``config.epochs`` epochs (continuing a checkpoint when ``config.resume``).

        ``end_training=False`` finishes the trackers but keeps the distributed process group, so
        that further Trainers in the same process (several runs in one script) can still train
        distributed; destroy it after the last run with ``PartialState().destroy_process_group()``.
        """
        config = self.config
        if self.is_main_process:
            save_config(config, config.output_dir)
        if config.resume:
            self.load_checkpoint()
        else:
            self._discard_earlier_run()
        if self.accelerator.trackers == [] and self.accelerator.log_with:
            self.accelerator.init_trackers('timm_aconv', config=_tracker_config(config))
        for callback in self.callbacks:
            callback.on_fit_start(self)
        while self.epoch < config.epochs and not self.should_stop:
            train_loss = self.train_one_epoch()
            record = dict(epoch=self.epoch + 1, step=self.global_step, train_loss=train_loss)
            record.update(self.evaluate())
            record.update({f'lr_{group.get("name", index)}': group['lr']
                           for index, group in enumerate(self.optimizer.param_groups)})
            if isinstance(self.scheduler, ReduceLROnPlateau):
                self.scheduler.step(record[self._monitor_key(record)])
            self._record(record)
            if config.print_epochs and self.is_main_process:
                print(epoch_line(record, config.epochs, self._monitor_key(record), self.unwrapped_model), flush=True)
            if config.save_best and self._improved():
                self._save_best(record)
            self.epoch += 1
            for callback in self.callbacks:
                callback.on_epoch_end(self, record)
            if config.save_every and (self.epoch % config.save_every == 0 or self.epoch == config.epochs
                                      or self.should_stop):
                self.save_checkpoint()
        self.accelerator.wait_for_everyone()
        if self.is_main_process:
            self.save_model_fn(self.unwrapped_model, Path(config.output_dir))
        for callback in self.callbacks:
            callback.on_fit_end(self)
        if end_training:
            self.accelerator.end_training()  # also destroys the process group
        else:
            for tracker in self.accelerator.trackers:
                tracker.finish()
        return self.history

    def train_one_epoch(self) -> float:
        """ One pass over the training set; returns the mean training loss over all processes. """
        accelerator, config = self.accelerator, self.config
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        loss_sum = torch.zeros((), device=accelerator.device)
        samples = torch.zeros((), device=accelerator.device)
        total = len(self.train_loader) if config.max_steps_per_epoch is None else min(
            len(self.train_loader), config.max_steps_per_epoch)
        # disable=None: no bar when stderr is not a terminal (piped logs keep the per-epoch line only)
        progress = tqdm(self.train_loader, total=total, desc=f'epoch {self.epoch + 1}/{config.epochs}',
                        disable=None if config.progress and accelerator.is_local_main_process else True,
                        leave=False, mininterval=1.0)
        for batch_index, batch in enumerate(progress):
            with accelerator.accumulate(self.model):
                outputs, targets = self.forward_fn(self.model, batch)
                loss = self.loss_fn(outputs, targets)
                accelerator.backward(loss if config.size_budget is None else loss + self.budget_penalty())
                if accelerator.sync_gradients:
                    if config.clip_value is not None:
                        accelerator.clip_grad_value_(self.model.parameters(), config.clip_value)
                    if config.clip_norm is not None:
                        accelerator.clip_grad_norm_(self.model.parameters(), config.clip_norm)
                self.optimizer.step()  # the sigma clamp hook runs inside, on real steps only
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    self.global_step += 1
                    if self.scheduler is not None and not isinstance(self.scheduler, ReduceLROnPlateau):
                        self.scheduler.step()
                    for callback in self.callbacks:
                        callback.on_optimizer_step(self)
                self.optimizer.zero_grad()
            batch_size = targets.shape[0]
            loss_sum += loss.detach().float() * batch_size
            samples += batch_size
            progress.set_postfix(loss=f'{loss.item():.4f}', refresh=False)
            if batch_index + 1 == total < len(self.train_loader):
                self.train_loader.end()  # leaving early: tell Accelerate this loader is done
                break
        progress.close()
        loss_sum, samples = accelerator.reduce(torch.stack([loss_sum, samples]), reduction='sum')
        return float(loss_sum / samples.clamp(min=1))

    def budget_penalty(self) -> torch.Tensor:
        """ The weighted kernel-size budget term of the training loss (``size_budget`` set). """
        return self.config.size_budget_weight * size_penalty(
            self.unwrapped_model, self.config.size_budget, output_pixels=self.output_pixels)

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """ The metric over the whole validation set (every sample once), keys prefixed ``val_``. """
        self.model.eval()
        self.metric.reset()
        for batch in self.val_loader:
            outputs, targets = self.forward_fn(self.model, batch)
            per_sample = self.metric.per_sample(outputs, targets)
            gathered = self.accelerator.gather_for_metrics(tuple(per_sample))
            self.metric.update(*gathered)
        return {f'val_{key}': value for key, value in self.metric.compute().items()}

    def _monitor_key(self, record: Dict[str, float]) -> str:
        if self.config.monitor not in record:
            raise ConfigError(f'monitor={self.config.monitor!r} is not a metric of this task; '
                              f'available: {sorted(key for key in record if key.startswith(("val_", "train_")))}')
        return self.config.monitor

    def _record(self, record: Dict[str, float]) -> None:
        key = self._monitor_key(record)
        previous = [row[key] for row in self.history] + [record[key]]
        record[f'best_{key}'] = max(previous) if self.config.monitor_mode == 'max' else min(previous)
        self.history.append(record)
        if self.is_main_process:
            write_history(self.history, self.config.output_dir)
        self.accelerator.log({key: value for key, value in record.items() if key != 'epoch'}, step=record['epoch'])

    # ---- the final and the best model
    def _save_weights(self, model: nn.Module, directory: Path) -> None:
        self.accelerator.save_model(model, str(directory))  # model.safetensors

    def _improved(self) -> bool:
        """ Whether the last recorded epoch beats every earlier one on ``monitor`` (the first of equals wins). """
        values = [row[self.config.monitor] for row in self.history]
        if len(values) == 1:
            return True
        earlier = values[:-1]
        return values[-1] > max(earlier) if self.config.monitor_mode == 'max' else values[-1] < min(earlier)

    def _save_best(self, record: Dict[str, float]) -> None:
        """ The model into ``best_dir``, replaced whole: written beside it, then swapped in. """
        if self.is_main_process:
            staging = self.best_dir.with_name('best.partial')
            shutil.rmtree(staging, ignore_errors=True)
            self.save_model_fn(self.unwrapped_model, staging)
            monitor = self.config.monitor
            (staging / 'best.json').write_text(json.dumps(dict(epoch=record['epoch'], monitor=monitor, value=record[monitor])))
            previous = self.best_dir.with_name('best.previous')
            shutil.rmtree(previous, ignore_errors=True)
            if self.best_dir.exists():
                self.best_dir.rename(previous)
            staging.rename(self.best_dir)
            shutil.rmtree(previous, ignore_errors=True)

    # ---- checkpoints
    def save_checkpoint(self) -> None:
        """ Model, optimizer, RNG and sampler states (Accelerate), scheduler, and last the progress. """
        directory = self.checkpoints_dir / f'checkpoint_{self.accelerator.project_configuration.iteration}'
        self.accelerator.save_state()  # into `directory`; deletes the oldest beyond keep_checkpoints first
        self.accelerator.wait_for_everyone()  # every process wrote its part before the folder is marked complete
        if self.is_main_process:
            if self.scheduler is not None:
                torch.save(self.scheduler.state_dict(), directory / 'scheduler.pt')
            state = dict(epoch=self.epoch, global_step=self.global_step, history=self.history)
            (directory / TRAINER_STATE).write_text(json.dumps(state))
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self) -> None:
        """ Continues from the newest complete checkpoint; a clear error when there is none. """
        checkpoint = latest_checkpoint(str(self.accelerator.project_dir))
        if checkpoint is None:
            raise FileNotFoundError(
                f'resume=True but there is no complete checkpoint in {str(self.checkpoints_dir)!r}: train without '
                f'--resume first (checkpoints are written every save_every={self.config.save_every} epochs)')
        if self.is_main_process:  # saves that did not finish (a crash mid-save): never resumed from, in the way of new ones
            for _, folder in _checkpoint_folders(self.checkpoints_dir):
                if not (folder / TRAINER_STATE).is_file():
                    shutil.rmtree(folder)
        self.accelerator.wait_for_everyone()
        self.accelerator.load_state(str(checkpoint))
        self.accelerator.project_configuration.iteration = int(_CHECKPOINT_NAME.fullmatch(checkpoint.name).group(1)) + 1
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
        self.epoch, self.global_step, self.history = state['epoch'], state['global_step'], state['history']
        if self.scheduler is not None:
            self.scheduler.load_state_dict(torch.load(checkpoint / 'scheduler.pt', weights_only=True))

    def _discard_earlier_run(self) -> None:
        """ A run that starts over deletes the checkpoints and best model of an earlier run in its folders. """
        if self.is_main_process:
            for directory in (self.checkpoints_dir, self.best_dir):
                shutil.rmtree(directory, ignore_errors=True)
        self.accelerator.wait_for_everyone()


def _tracker_config(config: EngineConfig) -> Dict[str, Any]:
    """ Trackers (TensorBoard hparams) accept only scalars and strings. """
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in config_to_dict(config).items()}
