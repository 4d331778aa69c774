"""The paper's Fashion-MNIST simple-CNN row at full length on one GPU: CONV vs ACONV 7×7, 100 epochs, 5 repeats

Algorithm 1 of ``recipes/configs/simple_cnn_fashion_mnist.yaml`` at its best size (7×7, Table 2: CONV
93.31 ± 0.06 → ACONV 93.84 ± 0.2, p 2.7e-4): the 10 runs (2 arms × 5 repeats) as parallel processes on the
one GPU, each the classification recipe on the run's resolved settings (those ``compare.py`` would use)::

    mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/   # 31 MB
    python benchmarks/fashion_full.py --data_dir data/fashion-mnist --output_dir runs/fashion_full

At ``--time_limit`` seconds (default 480: 8 minutes in all) the runs still going are stopped, and the
table is the comparison over the epochs that every run finished: all 100 when they fit (the paper's row,
then also ``comparison.md``, the curves and the learned sizes as ``compare.py`` writes them), else the
longest prefix that fits, which is what the first E epochs of the full runs would give (the schedule
depends only on the epochs before). Runs resume from their checkpoints: calling the script again continues
them. ``--parallel`` sets how many run at once (default: all), ``--num_threads`` the CPU threads of each
(default 1). ``torch.compile`` is off by default (``--compile auto`` turns it on): ten processes compiling
at once would spend minutes of the eight. Any other key of the config can follow as ``--key value``
(``--epochs 2 --max_steps_per_epoch 3 --cpu`` runs its wiring on a CPU in seconds).

Prints the table and the wall time; writes ``fashion_full.md`` / ``.json`` (table, epochs per run, time,
device) to ``--output_dir`` beside the runs' folders, their logs in ``logs/``.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import timm_aconv.recipes  # noqa: F401  (registers the shipped configs: --config by name)
from timm_aconv.engine import parse_config, run_cli
from timm_aconv.engine.config import save_config
from timm_aconv.engine.history import read_history
from timm_aconv.engine.output_dir import latest_checkpoint
from timm_aconv.experiments.compare import (
    ARMS,
    CompareConfig,
    best_sizes,
    best_versus_best,
    comparison_markdown,
    run_comparison,
    run_config,
    summarize,
)

PAPER_ROW = 'paper, Table 2 (full split, 100 epochs): CONV 93.31 ± 0.06, ACONV 93.84 ± 0.2, t 6.16, p 2.7e-4'


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='simple_cnn_fashion_mnist', help='comparison config (name or file)')
    parser.add_argument('--kernel_size', type=int, default=7, help="kernel size (the paper's best on Fashion: 7)")
    parser.add_argument('--repeats', type=int, default=5, help='repeats per arm')
    parser.add_argument('--data_dir', default='data/fashion-mnist', help='folder of the four idx files')
    parser.add_argument('--output_dir', default='runs/fashion_full', help='folder of the runs and the table')
    parser.add_argument('--parallel', type=int, default=None, help='runs at once (default: all of them)')
    parser.add_argument('--num_threads', type=int, default=1, help='CPU threads per run')
    parser.add_argument('--time_limit', type=float, default=480.0, help='seconds before the runs are stopped')
    parser.add_argument('--compile', default='false', help='torch.compile the models: false (default), auto, true')
    args, overrides = parser.parse_known_args(argv)
    if args.parallel is not None and args.parallel < 1:
        parser.error(f'--parallel must be >= 1, got {args.parallel}')
    if args.time_limit <= 0:
        parser.error(f'--time_limit must be > 0 seconds, got {args.time_limit}')
    return args, overrides


def comparison_config(args, overrides: Sequence[str]) -> CompareConfig:
    """The comparison's settings: the config, this script's choices, then the overrides."""
    return parse_config(
        CompareConfig,
        [
            '--config',
            args.config,
            '--kernel_sizes',
            str(args.kernel_size),
            '--repeats',
            str(args.repeats),
            '--data_dir',
            args.data_dir,
            '--download',
            'false',
            '--output_dir',
            args.output_dir,
            '--num_threads',
            str(args.num_threads),
            '--compile',
            args.compile,
            '--progress',
            'false',
            *overrides,
        ],
    )


def run_command(config: CompareConfig, arm: str, repeat: int) -> List[str]:
    """The recipe command of one run, its resolved settings written to ``<output_dir>/run_configs/``;
    ``--resume`` when the run has a complete checkpoint, else ``--overwrite`` (it starts over)."""
    run = run_config(config, arm, config.kernel_sizes[0], repeat)
    name = Path(run.output_dir).relative_to(config.output_dir).as_posix().replace('/', '_')
    path = save_config(run, str(Path(config.output_dir) / 'run_configs'), f'{name}.yaml')
    resume = latest_checkpoint(run.output_dir) is not None
    return [
        sys.executable,
        '-m',
        'timm_aconv.recipes.train_classification',
        '--config',
        str(path),
        '--resume' if resume else '--overwrite',
        'true',
    ]


def finished_epochs(output_dir: str) -> List[Dict[str, float]]:
    try:
        return read_history(output_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def prefix_comparison(config: CompareConfig, histories: Dict[str, Dict[int, List[Dict[str, float]]]]):
    """(markdown, epochs): the comparison table over the first ``epochs`` epochs, those every run finished
    (``histories[arm][repeat]``); (None, 0) when some run finished none."""
    epochs = min(len(history) for by_repeat in histories.values() for history in by_repeat.values())
    if epochs == 0:
        return None, 0
    size = config.kernel_sizes[0]
    peaks = {
        arm: {size: [max(record['val_accuracy'] for record in history[:epochs]) for history in by_repeat.values()]}
        for arm, by_repeat in histories.items()
    }
    rows, best_row, best = summarize(peaks), best_versus_best(peaks), best_sizes(peaks)['both']
    part = '' if epochs == config.epochs else f', the first {epochs} of {config.epochs} epochs'
    title = (
        f'{config.baseline_model} (CONV) vs {config.model} (ACONV) on {config.dataset}, {size}×{size}, '
        f'{config.repeats} repeats{part}'
    )
    return comparison_markdown(rows, best_row, best, title), epochs


def stop(processes: Dict[str, subprocess.Popen]) -> None:
    """SIGTERM to every run still going (a checkpoint already written stays), SIGKILL after 20 s."""
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def device_name(cpu: bool) -> str:
    import torch

    if not cpu and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f'CPU ({os.cpu_count()} cores)'


def main(argv: Optional[Sequence[str]] = None) -> int:
    start = time.monotonic()
    args, overrides = parse_args(argv)
    config = comparison_config(args, overrides)
    output = Path(config.output_dir)
    (output / 'logs').mkdir(parents=True, exist_ok=True)
    plan = {
        f'{arm.lower()}_seed{config.seed + repeat}': (arm, repeat) for arm in ARMS for repeat in range(config.repeats)
    }
    runs = {name: run_config(config, arm, config.kernel_sizes[0], repeat) for name, (arm, repeat) in plan.items()}
    pending = {name: item for name, item in plan.items() if len(finished_epochs(runs[name].output_dir)) < config.epochs}
    parallel = args.parallel or len(pending) or 1
    print(
        f'{len(runs)} runs ({config.epochs} epochs each), {len(runs) - len(pending)} finished before, '
        f'{min(parallel, len(pending))} at once on {device_name(config.cpu)}; time limit {args.time_limit:.0f} s',
        flush=True,
    )
    processes: Dict[str, subprocess.Popen] = {}
    logs = {}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.num_threads))
    timed_out = False
    while pending or any(process.poll() is None for process in processes.values()):
        if time.monotonic() - start > args.time_limit:
            timed_out = True
            stop(processes)
            break
        running = sum(process.poll() is None for process in processes.values())
        while pending and running < parallel:
            name, (arm, repeat) = next(iter(pending.items()))
            del pending[name]
            logs[name] = open(output / 'logs' / f'{name}.log', 'a')  # noqa: SIM115 (closed below)
            processes[name] = subprocess.Popen(
                run_command(config, arm, repeat), stdout=logs[name], stderr=subprocess.STDOUT, env=env
            )
            running += 1
        time.sleep(0.5)
    for log in logs.values():
        log.close()
    stopped = timed_out  # the runs stopped at the time limit exit with a signal: not failures
    failed = {
        name: process.returncode
        for name, process in processes.items()
        if process.returncode != 0 and not (stopped and process.returncode < 0)
    }
    histories = {arm: {} for arm in ARMS}
    for name, (arm, repeat) in plan.items():
        histories[arm][repeat] = finished_epochs(runs[name].output_dir)
    markdown, epochs = prefix_comparison(config, histories)
    elapsed = time.monotonic() - start
    complete = epochs == config.epochs
    if complete:  # every run finished: compare.py's own outputs (read back, no training)
        config.resume = True
        markdown = run_comparison(config).markdown
    done = {name: len(finished_epochs(run.output_dir)) for name, run in runs.items()}
    summary = dict(
        epochs=epochs,
        of_epochs=config.epochs,
        complete=complete,
        stopped_at_time_limit=timed_out and not complete,
        epochs_per_run=done,
        failed=failed,
        seconds=round(elapsed, 1),
        device=device_name(config.cpu),
        parallel=parallel,
        num_threads=args.num_threads,
        table=markdown,
    )
    (output / 'fashion_full.json').write_text(json.dumps(summary, indent=1))
    if markdown is None:
        print(f'no comparison: some run finished no epoch in {elapsed:.0f} s (epochs per run: {done})', flush=True)
    else:
        (output / 'fashion_full.md').write_text(markdown + '\n')
        print(markdown)
        print(PAPER_ROW)
    state = 'complete' if complete else f'stopped at the time limit after {epochs} of {config.epochs} epochs'
    print(f'{state}; {elapsed:.0f} s in all; epochs per run: {done}', flush=True)
    if failed:
        print(f'failed runs (exit status; see {output / "logs"}): {failed}', file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
