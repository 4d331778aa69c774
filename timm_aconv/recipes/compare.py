"""The paper's Algorithm 1: CONV vs ACONV for each kernel size, N seeds each, t-test table.

    python -m timm_aconv.recipes.compare --config simple_cnn_mnist   # installed: a shipped config by name
    python recipes/compare.py --config recipes/configs/simple_cnn_mnist.yaml
    python recipes/compare.py --config recipes/configs/digits.yaml --kernel_sizes 3,5,7,9 --repeats 5
    python recipes/compare.py --config recipes/configs/digits.yaml --resume   # reuse finished runs

Writes comparison.md/.csv/.json, comparison_curves.png and the ACONV arm's learned kernel sizes
(learned_sizes.md/.json) to --output_dir, one folder per run below it; a second comparison into the
same output_dir needs --resume (reads finished runs back) or --overwrite. The logic lives in
timm_aconv.experiments.compare.
"""

from typing import List, Optional

from accelerate import PartialState

from timm_aconv.engine import parse_config, run_cli
from timm_aconv.engine.output_dir import check_output_dir
from timm_aconv.experiments.compare import CompareConfig, run_comparison


def main(argv: Optional[List[str]] = None) -> None:
    config = parse_config(CompareConfig, argv, description=__doc__)
    check_output_dir(config.output_dir, config.resume, config.overwrite)
    result = run_comparison(config)
    PartialState().print(result.markdown)
    if result.learned_sizes:
        PartialState().print('\n' + result.learned_sizes)
    PartialState().print('written:', ', '.join(str(path) for path in result.files))


if __name__ == '__main__':
    run_cli(main)
