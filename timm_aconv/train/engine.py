""" The training engine shared by every recipe (Accelerate-based)

One loop for any task whose batches are ``(inputs, targets)`` and whose model maps
``inputs`` to ``outputs``: :class:`Trainer` prepares model, optimizer and loaders with
:class:`accelerate.Accelerator` (CPU, one or many GPUs, ``accelerate launch`` or ``torchrun``),
and runs

- mixed precision (``mixed_precision='bf16'|'fp16'``) and gradient accumulation
  (``grad_accum_steps``), through Accelerate;
- gradient clipping by value (the paper's Keras ``clipvalue=1.0``, applies to sigma too)
  and optionally by norm, on real optimizer steps only;
- an optional kernel-size budget: ``size_budget`` (a kernel-FLOPs fraction of the full grids) adds
  ``size_budget_weight * timm_aconv.size_penalty(model, size_budget)`` to the training loss;
- the sigma clamp into [1/n, n] after every real optimizer step
  (:func:`timm_aconv.register_sigma_clamp`), sigma in its own parameter group without weight
  decay and with an optional learning-rate scale (:func:`timm_aconv.param_groups`);
- a scheduler: ``constant``, ``plateau`` (reduce-on-plateau on ``monitor``, stepped per epoch)
  or ``one_cycle`` (the paper's per-iteration Gaussian bump, stepped per optimizer step);
- evaluation each epoch with ``accelerator.gather_for_metrics`` (each validation sample counts
  exactly once, whatever the number of processes) through a :class:`Metric`;
- checkpoints (``accelerator.save_state`` in ``output_dir/checkpoint`` after every
  ``save_every`` epochs, plus the trainer's own progress as JSON), ``resume=True`` continues
  from there with identical results;
- tqdm progress on the main process only; one metrics row per epoch written to
  ``output_dir/metrics.csv`` / ``metrics.json`` and to Accelerate trackers (TensorBoard when
  installed, ``log_with='auto'``); the final weights as ``output_dir/model.safetensors``.
  A row holds ``epoch``, ``step`` (optimizer steps so far), ``train_loss``, the metric's
  ``val_*`` values, ``lr_<group>`` (the learning rate at the end of the epoch, before a
  reduce-on-plateau decision) and ``best_<monitor>``.

Multi-process CPU runs (``torchrun --nproc_per_node 2 ...`` with gloo) need ``cpu=True``
(Accelerate only picks its multi-CPU mode when told, like ``accelerate launch --cpu``).

Classification (what ``recipes/train_classification.py`` does, minus the data plumbing)::

    >>> set_seed(config.seed)                       # before building the model
    >>> model = timm.create_model('aconv_simple_cnn', num_classes=10, in_chans=1)
    >>> trainer = Trainer(model, train_loader, val_loader, config,
    ...                   loss_fn=torch.nn.CrossEntropyLoss(), metric=ClassificationMetric())
    >>> history = trainer.fit()                     # list of per-epoch dicts
    >>> max(record['val_accuracy'] for record in history)   # the paper's peak accuracy

Another task, e.g. segmentation, needs only its loss and a :class:`Metric`:

- ``loss_fn(outputs, targets) -> scalar tensor`` (any callable; for pixel-wise cross-entropy
  ``torch.nn.CrossEntropyLoss()`` works as is on (B, C, H, W) logits and (B, H, W) targets).
- a ``Metric`` subclass (see :mod:`timm_aconv.train.metrics`): ``per_sample`` runs on each
  process and must return tensors whose first axis is the batch, so that
  ``gather_for_metrics`` can drop the duplicated tail samples. For pixel accuracy / mIoU,
  return one confusion matrix per image::

      class SegmentationMetric(Metric):
          def __init__(self, num_classes):
              self.num_classes = num_classes
              self.reset()

          def per_sample(self, outputs, targets):      # (B, C, H, W) logits, (B, H, W) labels
              predictions = outputs.argmax(1)
              index = (targets * self.num_classes + predictions).flatten(1)   # (B, H*W)
              counts = torch.zeros(index.shape[0], self.num_classes ** 2, device=index.device)
              counts.scatter_add_(1, index, torch.ones_like(index, dtype=counts.dtype))
              loss = F.cross_entropy(outputs.float(), targets, reduction='none').flatten(1).mean(1)
              return counts.view(-1, self.num_classes, self.num_classes), loss

          def update(self, counts, loss):               # gathered over all processes
              self.confusion += counts.sum(0).double().cpu()
              self.loss_sum += float(loss.sum()); self.images += loss.numel()

          def compute(self):
              true_positive = self.confusion.diag()
              union = self.confusion.sum(0) + self.confusion.sum(1) - true_positive
              return dict(pixel_accuracy=float(true_positive.sum() / self.confusion.sum()),
                          miou=float((true_positive / union.clamp(min=1)).mean()),
                          loss=self.loss_sum / self.images)

          def reset(self):
              self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)
              self.loss_sum, self.images = 0.0, 0

  and set ``monitor='val_miou'``, ``monitor_mode='max'`` (or keep ``val_loss``/``min``) for the
  plateau scheduler and the ``best_*`` column. Gathering per-image counts instead of logits
  keeps the gather small. Summing per-batch counts yourself with ``accelerator.reduce`` would
  double-count the padded tail samples — use the per-sample form.
- Batches that are not ``(inputs, targets)`` tuples: pass ``forward_fn(model, batch) ->
  (outputs, targets)``.
- Extra behaviour at fixed points: :class:`~timm_aconv.train.callbacks.Callback`
  (``on_fit_start``, ``on_optimizer_step``, ``on_epoch_end``, ``on_fit_end``).
- Settings: subclass :class:`EngineConfig` (a dataclass) with your recipe's fields and parse it
  with :func:`timm_aconv.train.config.parse_config` (YAML + command line overrides).

Checkpoints: Accelerate's ``save_state`` (model as safetensors, optimizer, RNG and sampler
states; loaded with ``weights_only=True``), the scheduler state (``torch.load(weights_only=True)``)
and ``trainer_state.json``. Resumed runs match uninterrupted ones exactly on CPU because the
training sampler is seeded per epoch (``use_seedable_sampler``) and the RNG states are restored.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm.auto import tqdm

from ..layers import OutputPixelTracker, adaptive_layers, param_groups, register_sigma_clamp, size_penalty
from .callbacks import Callback
from .config import ConfigError, config_to_dict
from .history import write_history
from .metrics import Metric
from .schedulers import create_scheduler

__all__ = ['EngineConfig', 'Trainer', 'set_seed', 'create_optimizer']

ForwardFn = Callable[[nn.Module, Any], Tuple[torch.Tensor, torch.Tensor]]


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
    save_every: int = 1
    log_with: Literal['auto', 'none', 'tensorboard', 'wandb', 'mlflow', 'comet_ml', 'aim', 'clearml', 'dvclive'] = 'auto'
    progress: bool = True
    num_threads: Optional[int] = None
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
        if self.size_budget is not None and not 0 < self.size_budget <= 1:
            raise ConfigError(f'size_budget must be in (0, 1] (kernel FLOPs relative to the full grids) or null, '
                              f'got {self.size_budget}')
        if self.size_budget_weight <= 0:
            raise ConfigError(f'size_budget_weight must be > 0, got {self.size_budget_weight}')


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
        accelerator: an existing Accelerator; default one built from ``config``.
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
    ) -> None:
        self.config = config
        self.loss_fn = loss_fn
        self.metric = metric
        self.callbacks = list(callbacks)
        self.forward_fn = forward_fn
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)  # small CPU models: 1 thread avoids spin-wait overhead
        self.accelerator = accelerator or Accelerator(
            cpu=config.cpu,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.grad_accum_steps,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
            log_with=_resolve_trackers(config.log_with),
            project_dir=config.output_dir,
        )
        optimizer = optimizer or create_optimizer(model, config)
        self.clamp_handle = register_sigma_clamp(optimizer, model)
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
    def checkpoint_dir(self) -> Path:
        return Path(self.config.output_dir) / 'checkpoint'

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
        if config.resume:
            self.load_checkpoint()
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
            self.epoch += 1
            for callback in self.callbacks:
                callback.on_epoch_end(self, record)
            if config.save_every and (self.epoch % config.save_every == 0 or self.epoch == config.epochs
                                      or self.should_stop):
                self.save_checkpoint()
        self.accelerator.wait_for_everyone()
        if self.is_main_process:
            self.accelerator.save_model(self.model, config.output_dir)
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
        progress = tqdm(self.train_loader, total=total, desc=f'epoch {self.epoch + 1}/{config.epochs}',
                        disable=not (config.progress and accelerator.is_local_main_process), leave=False)
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

    # ---- checkpoints
    def save_checkpoint(self) -> None:
        """ Model, optimizer, RNG and sampler states (Accelerate), scheduler and progress. """
        directory = self.checkpoint_dir
        self.accelerator.save_state(str(directory))
        if self.is_main_process:
            if self.scheduler is not None:
                torch.save(self.scheduler.state_dict(), directory / 'scheduler.pt')
            state = dict(epoch=self.epoch, global_step=self.global_step, history=self.history)
            (directory / 'trainer_state.json').write_text(json.dumps(state))
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self) -> None:
        """ Continues from ``output_dir/checkpoint``; a clear error when there is none. """
        directory = self.checkpoint_dir
        if not (directory / 'trainer_state.json').is_file():
            raise FileNotFoundError(
                f'resume=True but there is no checkpoint in {str(directory)!r}: train without --resume first '
                f'(checkpoints are written every save_every={self.config.save_every} epochs)')
        self.accelerator.load_state(str(directory))
        state = json.loads((directory / 'trainer_state.json').read_text())
        self.epoch, self.global_step, self.history = state['epoch'], state['global_step'], state['history']
        if self.scheduler is not None:
            self.scheduler.load_state_dict(torch.load(directory / 'scheduler.pt', weights_only=True))


def _tracker_config(config: EngineConfig) -> Dict[str, Any]:
    """ Trackers (TensorBoard hparams) accept only scalars and strings. """
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in config_to_dict(config).items()}
