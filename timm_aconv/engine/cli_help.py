"""The command line's help text: one line and a group for every recipe config key

Recipe configs share most keys (``lr``, ``sigma_init``, ``output_dir``, ...), so their help lives
in one table, :data:`FIELD_HELP`, keyed by field name: the same key reads the same in every
recipe's ``--help``. A field can instead carry its own text,
``field(default=..., metadata={'help': '...', 'group': 'model'})``, which wins over the table.
``tests/test_cli.py`` checks that every field of every recipe config has a help line.
"""

import dataclasses
from typing import Dict, Tuple

__all__ = ['FIELD_HELP', 'GROUPS', 'field_help']

# the order of the groups in --help
GROUPS = ('model', 'data', 'optimisation', 'schedule', 'comparison', 'run and output', 'other')

MODEL, DATA, OPTIM, SCHEDULE, COMPARISON, RUN, OTHER = GROUPS

FIELD_HELP: Dict[str, Tuple[str, str]] = {
    # model
    'model': (MODEL, 'timm model name: aconv_*/conv_* twins (aconv_simple_cnn, aconv_resnet20, ...) or any timm model'),
    'kernel_size': (MODEL, 'kernel size n of the k×k convolutions, odd >= 3; null keeps the model default'),
    'sigma_init': (MODEL, 'initial sigma of the adaptive filters: LOW,HIGH spaced over the filters (or one value)'),
    'sigma_bounds': (MODEL, "LOW,HIGH range sigma is clamped into after every step; null: the paper's [1/n, n]"),
    'drop_rate': (MODEL, 'dropout rate of the model (timm drop_rate); null keeps the model default'),
    'model_kwargs': (MODEL, 'further keyword arguments of timm.create_model, e.g. "{drop_path_rate: 0.1}"'),
    'convert': (MODEL, "make the model's convolutions adaptive (timm_aconv.convert_convs, n = kernel_size or 7)"),
    'convert_include': (MODEL, 'with --convert: convert only layers matching these module-name patterns (fnmatch)'),
    'convert_exclude': (MODEL, 'with --convert: leave layers matching these module-name patterns (fnmatch) ordinary'),
    'baseline_model': (MODEL, "the CONV arm's timm model; null: the conv_ twin of --model (or --model with --convert)"),
    'arch': (MODEL, "U-Net: the paper's Xception-style U-Net or SMP's U-Net with --encoder_name"),
    'encoder_name': (MODEL, 'SMP encoder of --arch smp_unet (e.g. resnet18, resnet34)'),
    'variants': (MODEL, 'first convolutions to compare: aconv<n> (adaptive n×n) or conv<n> (ordinary), n odd'),
    'aconv_weight_init': (MODEL, "initialisation of the adaptive layer's W (he_uniform: the authors' code)"),
    'conv_weight_init': (MODEL, "initialisation of the ordinary layer's W (glorot_uniform: Keras' default)"),
    # data
    'dataset': (DATA, 'dataset name; offline ones need no download'),
    'data_dir': (DATA, 'folder holding (or receiving) downloaded datasets'),
    'download': (DATA, 'download a dataset missing from --data_dir'),
    'img_size': (DATA, 'resize images to img_size × img_size pixels; null keeps the native size'),
    'augment': (DATA, "the paper's training augmentation"),
    'augment_shift': (
        DATA,
        "largest shift of the augmentation, a fraction of the side (edges replicated, Keras' nearest)",
    ),
    'input_norm': (
        DATA,
        'input preprocessing from the training split: none, pixel_mean (minus its per-pixel mean), standardize',
    ),
    'split_seed': (
        DATA,
        'seed of the train/validation split (digits, synthetic, lfw), of generated data and of train_subset; '
        "null: the run's seed, a new split per repeat (train_subset of an official split: 0)",
    ),
    'train_subset': (
        DATA,
        'train on a stratified subset of this many training images, drawn with split_seed (the low-data '
        'setting; validation stays whole); null: all',
    ),
    'batch_size': (
        DATA,
        'training batch size: the GLOBAL batch over all processes (each of N processes loads batch_size / N)',
    ),
    'val_batch_size': (DATA, 'validation batch size: the GLOBAL batch over all processes; null: --batch_size'),
    'val_protocol': (
        DATA,
        'U-Net validation: full (the whole test split) or authors (the first 704 test images, '
        "bilinearly resized masks, as the paper's numbers)",
    ),
    'num_workers': (DATA, 'DataLoader worker processes (0: load in the main process)'),
    'shapes_train_size': (DATA, 'training images of the generated shapes dataset'),
    'shapes_val_size': (DATA, 'validation images of the generated shapes dataset'),
    'image': (DATA, 'the scikit-learn sample image to filter'),
    'image_size': (DATA, "the image's centre square is resized to image_size × image_size pixels"),
    # optimisation
    'epochs': (OPTIM, 'training epochs'),
    'iterations': (OPTIM, 'full-batch SGD iterations per layer'),
    'optimizer': (OPTIM, 'optimizer over timm_aconv.param_groups (sigma: no weight decay)'),
    'lr': (OPTIM, 'learning rate (peak rate of the one_cycle schedule)'),
    'momentum': (OPTIM, 'SGD momentum'),
    'weight_decay': (OPTIM, 'L2 weight decay of weights (never of sigma, norms or biases)'),
    'l2': (OPTIM, 'Keras-style L2 penalty on W (SGD weight decay 2·l2)'),
    'sigma_lr_scale': (OPTIM, "sigma's learning rate = lr × sigma_lr_scale"),
    'clip_value': (OPTIM, 'clip every gradient (sigma too) into [-v, v] (Keras clipvalue); null: no clipping'),
    'clip_norm': (OPTIM, 'clip the total gradient norm; null: no clipping'),
    'grad_accum_steps': (OPTIM, 'batches per optimizer step (gradient accumulation)'),
    'max_steps_per_epoch': (OPTIM, 'stop each epoch after this many batches; null: the whole training set'),
    'mixed_precision': (OPTIM, 'Accelerate mixed precision'),
    'seed': (OPTIM, 'random seed (comparisons use seed, seed + 1, ... per repeat)'),
    'deterministic': (OPTIM, 'torch.use_deterministic_algorithms (warn only)'),
    'compile': (OPTIM, 'torch.compile the model: auto (on CUDA devices), true or false'),
    'compile_mode': (
        OPTIM,
        'torch.compile mode when compiling: null (torch default), reduce-overhead (CUDA graphs '
        'of the compiled step), max-autotune, max-autotune-no-cudagraphs',
    ),
    'size_budget': (
        OPTIM,
        'kernel FLOPs of the adaptive layers relative to their full grids; '
        'adds size_budget_weight × size_penalty to the loss; null: no budget',
    ),
    'size_budget_weight': (OPTIM, 'weight of the size penalty in the loss (higher lands faster, further below)'),
    'train_crop_tol': (
        OPTIM,
        'train each adaptive layer at the smallest window holding all but this share of its envelope '
        'energy (and of its derivative in sigma), e.g. 1e-3; null: the full grid (the paper)',
    ),
    'train_crop_interval': (OPTIM, 'optimizer steps between two reads of sigma that choose the training windows'),
    # schedule
    'scheduler': (SCHEDULE, "learning-rate schedule: constant, reduce-on-plateau per epoch, the paper's one-cycle"),
    'monitor': (SCHEDULE, 'metric for the plateau schedule and the best_* column (val_loss, val_accuracy, ...)'),
    'monitor_mode': (SCHEDULE, 'whether a lower (min) or higher (max) --monitor is better'),
    'plateau_factor': (SCHEDULE, 'reduce-on-plateau: multiply the lr by this factor'),
    'plateau_patience': (SCHEDULE, 'reduce-on-plateau: epochs without improvement before reducing'),
    'plateau_cooldown': (SCHEDULE, 'reduce-on-plateau: epochs to wait after a reduction'),
    'min_lr': (SCHEDULE, 'reduce-on-plateau: lowest learning rate'),
    'one_cycle_floor_lr': (SCHEDULE, 'one_cycle: learning rate at the start and the end'),
    # comparison
    'kernel_sizes': (COMPARISON, 'kernel sizes to compare, e.g. 3,5,7,9'),
    'repeats': (COMPARISON, 'training runs per arm and kernel size / variant (seeds seed, seed + 1, ...)'),
    'examples': (COMPARISON, 'validation images drawn in examples.png (0: no figure)'),
    'budgets': (COMPARISON, "kernel-size budgets of the ACONV arms, fractions of the full grids' kernel FLOPs"),
    'train_crop_budgets': (
        COMPARISON,
        'budgets (null: none) of extra ACONV arms trained at the learned size with train_crop_tol',
    ),
    'conv_kernel_sizes': (COMPARISON, 'kernel sizes of the ordinary CONV arms'),
    'crop_tol': (COMPARISON, 'energy share each filter may lose when exported at its learned size'),
    'export_strategy': (
        COMPARISON,
        'export_learned_sizes strategy: bucketed, single (one crop per layer) or auto (timed)',
    ),
    'latency_batch': (COMPARISON, 'images per batch of the latency measurement'),
    'latency_rounds': (COMPARISON, 'round-robin rounds of the latency measurement'),
    'latency_clock': (COMPARISON, "latency clock: wall, or cpu (this process's CPU time: for busy machines, 1 thread)"),
    # run and output
    'output_dir': (RUN, 'folder for metrics, checkpoints, weights and figures'),
    'resume': (RUN, 'continue the run in --output_dir (finished runs of a comparison are read back)'),
    'overwrite': (RUN, 'write into an --output_dir that already holds a run, replacing its files'),
    'save_every': (RUN, 'write a checkpoint every n epochs (0: none)'),
    'keep_checkpoints': (RUN, 'checkpoints kept in output_dir/checkpoints (the newest complete one resumes), >= 2'),
    'save_best': (RUN, 'also keep the best model by --monitor in output_dir/best'),
    'push_to_hub': (RUN, 'Hugging Face Hub repo id: the best model is pushed there after training; null: no push'),
    'cpu': (RUN, 'train on CPU; multi-process CPU runs (torchrun) need it'),
    'num_threads': (RUN, "torch CPU threads per process (results depend on it); null: torch's default"),
    'log_with': (RUN, 'experiment tracker (auto: TensorBoard when installed)'),
    'progress': (RUN, 'progress bar on an interactive terminal (never in piped logs)'),
    'print_epochs': (RUN, 'print one line per epoch: loss, monitored metric, lr, sigma range'),
    'plots': (RUN, 'write the PNG figures'),
}


def field_help(field: dataclasses.Field) -> Tuple[str, str]:
    """(group, help line) of a config field: its ``metadata`` first, else :data:`FIELD_HELP`.

    A field found in neither is listed under ``other`` with no text (the recipe still runs;
    ``tests/test_cli.py`` fails until the field gets its line).
    """
    group, text = FIELD_HELP.get(field.name, (OTHER, ''))
    group = field.metadata.get('group', group)
    if group not in GROUPS:
        raise ValueError(f'config field {field.name!r}: help group {group!r} is not one of {GROUPS}')
    return group, field.metadata.get('help', text)
