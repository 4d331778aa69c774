"""Launcher checks: how many processes the launcher started, and Accelerate's process state

A run started by ``torchrun`` or ``accelerate launch`` with several processes must train with all of
them; these checks stop one that would silently train N independent copies into one output folder.
"""

import os
from typing import Optional

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from .config import ConfigError

__all__ = ['check_process_count', 'expected_process_count', 'process_state']


def _launcher_process_count() -> Optional[int]:
    """How many processes the launcher asked for, when it says so (torchrun's WORLD_SIZE), or -1
    for ``accelerate launch --num_processes N`` without --multi_gpu (its simple launcher sets
    MASTER_PORT for N > 1 but starts one process), else None."""
    if 'WORLD_SIZE' in os.environ:
        return int(os.environ['WORLD_SIZE'])
    mpi_sizes = ('PMI_SIZE', 'OMPI_COMM_WORLD_SIZE', 'MV2_COMM_WORLD_SIZE')  # mpirun: Accelerate's multi-CPU mode
    if (
        'ACCELERATE_USE_CPU' in os.environ
        and 'MASTER_PORT' in os.environ
        and not any(name in os.environ for name in mpi_sizes)
    ):
        return -1
    return None


def check_process_count(processes: int) -> None:
    """A :class:`ConfigError` when the launcher asked for several processes but training would run
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
            f'process'
        )
    if requested == -1:
        raise ConfigError(
            'accelerate launch --num_processes N without --multi_gpu started a single process (its simple launcher '
            'cannot start several on CPU): for N processes on CPU run torchrun --standalone --nproc_per_node N '
            '<recipe> ... --cpu'
        )


def expected_process_count(cpu: bool) -> int:
    """How many processes Accelerate will train with under the current launcher: WORLD_SIZE with
    ``cpu=True`` or an accelerator device (GPU), else one."""
    requested = _launcher_process_count() or 1
    if requested < 1:
        return 1
    has_device = torch.accelerator.is_available() if hasattr(torch, 'accelerator') else torch.cuda.is_available()
    return requested if cpu or has_device else 1


def process_state(cpu: bool = False) -> PartialState:
    """Accelerate's shared process state, after :func:`check_process_count`: the first code of a run
    that asks for it (data loaders, a comparison's first output) would otherwise wait in a process
    group for launcher processes that Accelerate runs on their own. ``cpu`` as ``EngineConfig.cpu``
    (or ``accelerate launch --cpu``'s ``ACCELERATE_USE_CPU``)."""
    cpu = cpu or parse_flag_from_env('ACCELERATE_USE_CPU')
    check_process_count(expected_process_count(cpu))
    return PartialState(cpu=cpu)
