""" The paper's Algorithm 1: CONV vs ACONV for each kernel size, N seeds each, t-test table.

    python recipes/compare.py --config recipes/configs/compare_digits.yaml
    python recipes/compare.py --config recipes/configs/simple_cnn_mnist.yaml --kernel_sizes 3,5,7,9 --repeats 5
    python recipes/compare.py --config recipes/configs/compare_digits.yaml --resume   # reuse finished runs

Writes comparison.md/.csv/.json and comparison_curves.png to --output_dir; the logic lives in
:mod:`timm_aconv.train.compare`.
"""
from typing import List, Optional

from accelerate import PartialState

from timm_aconv.train import parse_config, run_cli
from timm_aconv.train.compare import CompareConfig, run_comparison


def main(argv: Optional[List[str]] = None) -> None:
    result = run_comparison(parse_config(CompareConfig, argv))
    PartialState().print(result.markdown)
    PartialState().print('written:', ', '.join(str(path) for path in result.files))


if __name__ == '__main__':
    run_cli(main)
