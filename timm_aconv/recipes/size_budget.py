"""Kernel-size budgets: accuracy vs deployed latency and kernel FLOPs, against ACONV and CONV.

    python -m timm_aconv.recipes.size_budget --config size_budget_digits   # installed: a shipped config by name
    python recipes/size_budget.py --config recipes/configs/size_budget_digits.yaml
    python recipes/size_budget.py --config recipes/configs/size_budget_digits.yaml --budgets 0.5,0.25 --repeats 3
    python recipes/size_budget.py --config recipes/configs/size_budget_digits.yaml --resume  # re-time finished runs

Writes size_budget.md/.csv/.json and size_budget.png to --output_dir. A second run into an
output_dir that holds one needs --resume (finished runs are read back and re-timed) or --overwrite.
The logic lives in timm_aconv.experiments.size_budget_sweep.
"""

from typing import List, Optional

from accelerate import PartialState

from timm_aconv.engine import parse_config, run_cli
from timm_aconv.engine.output_dir import check_output_dir
from timm_aconv.experiments.size_budget_sweep import SizeBudgetConfig, run_size_budget_sweep


def main(argv: Optional[List[str]] = None) -> None:
    config = parse_config(SizeBudgetConfig, argv, description=__doc__)
    check_output_dir(config.output_dir, config.resume, config.overwrite)
    result = run_size_budget_sweep(config)
    PartialState().print(result.markdown)
    PartialState().print('written:', ', '.join(str(path) for path in result.files))


if __name__ == '__main__':
    run_cli(main)
