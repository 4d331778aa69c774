"""``settings.yaml``: the resolved settings of a comparison and of each of its runs

Written next to a comparison table, so that a table can always be traced to what produced it:
the library versions, the comparison's own config, the settings every run shares
(``runs_common``) and, per run, the settings that differ from those (seed, model, kernel size,
split seed, output directory, ...). Every value is the resolved one the run used.
"""

from pathlib import Path
from typing import Any, Dict

import yaml

from ..engine.config import config_to_dict

__all__ = ['settings_document', 'write_settings']


def settings_document(config: Any, runs: Dict[str, Any]) -> Dict[str, Any]:
    """``config`` (a dataclass) and ``runs`` ({name: run dataclass}) as one YAML-ready mapping."""
    import timm
    import torch

    from .. import __version__

    per_run = {name: config_to_dict(run) for name, run in runs.items()}
    first = next(iter(per_run.values()), {})
    common = {key: value for key, value in first.items() if all(values[key] == value for values in per_run.values())}
    return dict(
        versions=dict(timm_aconv=__version__, torch=str(torch.__version__), timm=str(timm.__version__)),
        comparison=config_to_dict(config),
        runs_common=common,
        runs={
            name: {key: value for key, value in values.items() if key not in common} for name, values in per_run.items()
        },
    )


def write_settings(path: Path, config: Any, runs: Dict[str, Any]) -> Path:
    """Writes :func:`settings_document` as YAML to ``path``."""
    path = Path(path)
    path.write_text(
        '# Resolved settings of this comparison and of each of its runs (runs_common: shared by all runs)\n'
        + yaml.safe_dump(settings_document(config, runs), sort_keys=False, allow_unicode=True)
    )
    return path
