"""A run's output folder: the refusal to write over a finished run, and its checkpoint folders

Checkpoints live in ``output_dir/checkpoints/checkpoint_<n>``; a save counts once its
``trainer_state.json`` (:data:`TRAINER_STATE`) is written, so an interrupted save is never resumed from.
"""

import re
from pathlib import Path
from typing import List, Optional, Tuple

from .config import ConfigError

__all__ = ['TRAINER_STATE', 'check_output_dir', 'checkpoint_folders', 'latest_checkpoint']

TRAINER_STATE = 'trainer_state.json'  # written last: a checkpoint folder with it is complete
CHECKPOINT_NAME = re.compile(r'checkpoint_(\d+)')


def check_output_dir(output_dir: str, resume: bool = False, overwrite: bool = False) -> None:
    """A :class:`ConfigError` when ``output_dir`` already holds files (a previous run) and neither
    ``resume`` nor ``overwrite`` says what to do with them; recipes call it before training, on every
    process, before any of them writes."""
    directory = Path(output_dir)
    if resume or overwrite or not directory.is_dir() or next(directory.iterdir(), None) is None:
        return
    held = sorted(path.name + ('/' if path.is_dir() else '') for path in directory.iterdir())
    shown = ', '.join(held[:4]) + (', ...' if len(held) > 4 else '')
    raise ConfigError(
        f'output_dir {str(directory)!r} already holds a run ({shown}): add --resume to continue it, '
        f'--overwrite to replace it, or choose another --output_dir'
    )


def checkpoint_folders(checkpoints_dir: Path) -> List[Tuple[int, Path]]:
    """``(n, folder)`` of every ``checkpoint_<n>`` in ``checkpoints_dir``, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = [
        (int(match.group(1)), folder)
        for folder in checkpoints_dir.iterdir()
        if (match := CHECKPOINT_NAME.fullmatch(folder.name)) and folder.is_dir()
    ]
    return sorted(found)


def latest_checkpoint(output_dir: str) -> Optional[Path]:
    """The newest complete checkpoint folder of the run in ``output_dir`` (None when there is none)."""
    complete = [
        folder
        for _, folder in checkpoint_folders(Path(output_dir) / 'checkpoints')
        if (folder / TRAINER_STATE).is_file()
    ]
    return complete[-1] if complete else None
