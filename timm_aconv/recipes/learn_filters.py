"""Learn 9 image filters with one adaptive 9×9 layer and one ordinary 9×9 layer (paper section 4.1).

    python -m timm_aconv.recipes.learn_filters --config learn_filters   # installed: a shipped config by name
    python recipes/learn_filters.py --config recipes/configs/learn_filters.yaml
    python recipes/learn_filters.py --config recipes/configs/learn_filters.yaml --iterations 500 --image flower.jpg

A single-image optimisation (no dataset, seconds to a minute on a CPU): it prints the final MSE
of ACONV and CONV and writes results.json and the figure learn_filters.png (targets, outputs,
envelopes, product kernels, MSE and sigma curves) to --output_dir; a second run into it needs
--overwrite. The logic lives in timm_aconv.experiments.filters.
"""

from typing import List, Optional

import torch

from timm_aconv.engine import parse_config, run_cli
from timm_aconv.engine.output_dir import check_output_dir
from timm_aconv.experiments.filters import LearnFiltersConfig, run_learn_filters, save_learn_filters


def main(argv: Optional[List[str]] = None) -> dict:
    config = parse_config(LearnFiltersConfig, argv, description=__doc__)
    check_output_dir(config.output_dir, overwrite=config.overwrite)
    result = run_learn_filters(config)
    summary = save_learn_filters(result, config)
    for kind, fit in summary.items():
        print(f'{kind.upper():5s} final MSE {fit["final_mse"]:.3e}  (lowest during training {fit["best_mse"]:.3e})')
    threads = torch.get_num_threads()
    print(f'results in {config.output_dir} ({threads} torch thread{"" if threads == 1 else "s"})')
    return summary


if __name__ == '__main__':
    run_cli(main)
