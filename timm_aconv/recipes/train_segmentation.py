r""" Train U-Nets whose first convolution is adaptive 7×7, ordinary 7×7 or ordinary 3×3 (paper 4.4).

    python -m timm_aconv.recipes.train_segmentation --config segmentation   # installed: a shipped config by name
    python recipes/train_segmentation.py --config recipes/configs/segmentation.yaml      # offline shapes, CPU
    accelerate launch --multi_gpu recipes/train_segmentation.py \
        --config recipes/configs/segmentation_oxford_pets.yaml                             # the paper's runs
    accelerate launch --multi_gpu recipes/train_segmentation.py \
        --config recipes/configs/segmentation_oxford_pets_smp.yaml                         # SMP ResNet U-Net

Every key of the YAML config can be overridden on the command line, e.g.
--variants aconv7,conv7 --repeats 5 --data_dir /data. A second run into an output_dir that holds
one needs --resume (finished runs are read back) or --overwrite. The logic lives in
timm_aconv.experiments.segmentation (task) and timm_aconv.experiments.segmentation_compare (repeats, table,
figures); the training loop is the shared Accelerate engine.
"""

from typing import List, Optional, Sequence

from accelerate import PartialState

from timm_aconv.engine import Callback, parse_config, run_cli
from timm_aconv.engine.output_dir import check_output_dir
from timm_aconv.experiments.segmentation import SegmentationConfig
from timm_aconv.experiments.segmentation_compare import SegmentationResult, train_segmentation


def main(argv: Optional[List[str]] = None, callbacks: Sequence[Callback] = ()) -> SegmentationResult:
    config = parse_config(SegmentationConfig, argv, description=__doc__)
    check_output_dir(config.output_dir, config.resume, config.overwrite)
    result = train_segmentation(config, callbacks)
    if PartialState().is_main_process:
        print(result.markdown)
        print(f'results in {config.output_dir}')
    return result


if __name__ == '__main__':
    run_cli(main)
