"""Evaluation metrics that stay exact under data-parallel evaluation

The engine evaluates every batch on every process, turns it into *per-sample* values with
:meth:`Metric.per_sample` (the batch axis first), collects them from all processes with
``accelerator.gather_for_metrics`` — which drops the samples a distributed sampler repeated to
even out the last batch, so each validation sample counts exactly once — and hands the
gathered tensors to :meth:`Metric.update`. Every process therefore computes the same numbers.
"""

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ['ClassificationMetric', 'Metric', 'SegmentationMetric']

_FRACTIONAL = -1  # the label get_stats ignores: pixels whose (bilinearly resized) label is fractional


def _smp_metrics():
    """``segmentation_models_pytorch.metrics``, or an ImportError naming the extra that installs it."""
    try:
        import segmentation_models_pytorch.metrics as smp_metrics
    except ImportError as error:
        raise ImportError(
            f"SegmentationMetric computes with segmentation-models-pytorch's metrics ({error}); "
            f"pip install 'timm-aconv[smp]'"
        ) from error
    return smp_metrics


class Metric:
    """The contract between a task and the engine's evaluation loop.

    Subclasses implement:

    - ``per_sample(outputs, targets) -> tuple of tensors``: runs on each process before the
      gather; every tensor has the batch axis first (reduce here what you can, e.g. logits →
      predicted labels, or a per-image confusion matrix of shape (batch, classes, classes)).
    - ``update(*gathered)``: accumulates the gathered tensors (the whole batch of all processes).
    - ``compute() -> dict``: the epoch's numbers, e.g. ``{'accuracy': 0.98, 'loss': 0.05}``;
      the engine prefixes them with ``val_``.
    - ``reset()``: clears the accumulators (called before each evaluation).
    """

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def update(self, *gathered: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> Dict[str, float]:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class ClassificationMetric(Metric):
    """Top-1 accuracy and mean cross-entropy over the validation set, and the sample count."""

    def __init__(self) -> None:
        self.reset()

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        loss = F.cross_entropy(outputs.float(), targets, reduction='none')
        correct = (outputs.argmax(dim=1) == targets).float()
        return loss, correct

    def update(self, loss: torch.Tensor, correct: torch.Tensor) -> None:
        self.loss_sum += float(loss.sum())
        self.correct += float(correct.sum())
        self.samples += int(correct.numel())

    def compute(self) -> Dict[str, float]:
        if self.samples == 0:
            raise RuntimeError('ClassificationMetric.compute() before any update: the validation set is empty')
        return dict(accuracy=self.correct / self.samples, loss=self.loss_sum / self.samples, samples=self.samples)

    def reset(self) -> None:
        self.loss_sum, self.correct, self.samples = 0.0, 0.0, 0


class SegmentationMetric(Metric):
    """Pixel accuracy, mean IoU over classes, per-class IoU and mean cross-entropy per image.

    Computed with SMP's metrics (:mod:`segmentation_models_pytorch.metrics`): ``per_sample``
    returns each image's true/false positive/negative pixel counts per class
    (``smp.metrics.get_stats``, shapes (batch, classes)), so the engine's ``gather_for_metrics``
    counts every validation image exactly once; ``compute`` sums them over the validation set and
    takes the IoU per class (``iou_score``, a class that is neither present nor predicted scores
    0), its mean over classes (mIoU) and the pixel accuracy as the micro-averaged ``recall``.

    Targets are class indices, long or float. Float targets with fractional values (masks resized
    bilinearly, the authors' validation) are scored as Keras scored them: such a pixel equals no
    prediction, so it counts as an error in the pixel accuracy (a false negative of no class; it
    is left out of the per-class counts and the IoUs), and the cross-entropy uses the label
    truncated to an integer.
    """

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None) -> None:
        class_names = tuple(f'class{index}' for index in range(num_classes)) if class_names is None else class_names
        if len(class_names) != num_classes:
            raise ValueError(f'class_names must name the {num_classes} classes, got {list(class_names)}')
        _smp_metrics()  # fail here, not in the first evaluation, without the smp extra
        self.num_classes, self.class_names = num_classes, tuple(class_names)
        self.reset()

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(tp, fp, fn, tn, loss, fractional)`` per image: pixel counts per class, the mean
        cross-entropy and the number of pixels with a fractional label."""
        labels = targets.long()  # truncation: the labels Keras' sparse cross-entropy used for float masks
        whole = targets == labels  # False where a bilinear resize left a fractional label
        scored = torch.where(whole, labels, _FRACTIONAL)
        stats = _smp_metrics().get_stats(
            outputs.argmax(1), scored, mode='multiclass', num_classes=self.num_classes, ignore_index=_FRACTIONAL
        )
        loss = F.cross_entropy(outputs.float(), labels, reduction='none').flatten(1).mean(1)
        fractional = (~whole).flatten(1).sum(1)
        # get_stats returns CPU tensors; the gather needs them where the process computes (NCCL: the GPU)
        return (*(counts.to(outputs.device) for counts in stats), loss, fractional)

    def update(
        self,
        tp: torch.Tensor,
        fp: torch.Tensor,
        fn: torch.Tensor,
        tn: torch.Tensor,
        loss: torch.Tensor,
        fractional: torch.Tensor,
    ) -> None:
        for total, counts in zip(self.stats, (tp, fp, fn, tn)):
            total += counts.sum(0).cpu()
        self.fractional += int(fractional.sum())
        self.loss_sum += float(loss.sum())
        self.images += loss.numel()

    def compute(self) -> Dict[str, float]:
        smp_metrics = _smp_metrics()
        if self.images == 0:
            raise RuntimeError('SegmentationMetric.compute() before any update: the validation set is empty')
        tp, fp, fn, tn = (counts.double()[None] for counts in self.stats)  # (1 image: the whole set, classes)
        iou = smp_metrics.iou_score(tp, fp, fn, tn, reduction='none', zero_division=0.0)[0]
        # fractional pixels: one more column that is never predicted right
        no_class = torch.tensor([[0.0]], dtype=torch.float64)
        pixel_accuracy = smp_metrics.recall(
            torch.cat([tp, no_class], 1),
            torch.cat([fp, no_class], 1),
            torch.cat([fn, no_class + self.fractional], 1),
            torch.cat([tn, no_class], 1),
            reduction='micro',
        )
        values = dict(pixel_accuracy=float(pixel_accuracy), miou=float(iou.mean()), loss=self.loss_sum / self.images)
        values.update({f'iou_{name}': float(value) for name, value in zip(self.class_names, iou)})
        return values

    def reset(self) -> None:
        self.stats = tuple(torch.zeros(self.num_classes, dtype=torch.long) for _ in range(4))  # tp, fp, fn, tn
        self.fractional, self.loss_sum, self.images = 0, 0.0, 0
