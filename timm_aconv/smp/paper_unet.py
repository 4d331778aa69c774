"""The paper's segmentation network: the Keras example's Xception-style U-Net

The paper's U-Net experiment (section 4.4) used the small U-Net of the Keras segmentation
example (F. Chollet, "Image segmentation with a U-Net-like architecture") with its first, ordinary
convolution replaced by a 7×7 adaptive layer; the separable and transposed convolutions stay
ordinary. The authors' configuration:

- entry: conv 32 filters, stride 2 (the adaptive 7×7 layer) → BN → ELU;
- encoder blocks of widths 48/64/96: [ELU → separable 3×3 → BN]×2 → max-pool 3/2, plus the
  block input through a 1×1 stride-2 conv (residual);
- decoder blocks of widths 96/64/48/32: [ELU → transposed 3×3 → BN]×2 → upsample ×2, plus the
  block input upsampled ×2 through a 1×1 conv (residual);
- a 3×3 conv to the class logits (the Keras softmax is left to the loss).

There are no skip connections between encoder and decoder (only the residuals). Keras defaults
are kept: glorot-uniform kernels, zero biases, BN ``eps=1e-3`` and momentum 0.99 (PyTorch 0.01).
Two small departures: the entry conv has no bias (the authors' adaptive layer has none and a BN
follows; the ordinary baselines match it), and "same" padding is symmetric (Keras pads the extra
pixel of stride-2 layers at the bottom/right); shapes are identical.
Inputs must be divisible by 16. :class:`PaperUNet` is an SMP ``SegmentationModel`` (``encoder``,
``decoder``, ``segmentation_head``), so ``save_pretrained`` / ``smp.from_pretrained`` work.
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
from segmentation_models_pytorch.base import SegmentationModel

from ..layers import AdaptiveConv2d
from ..layers.covariance import SigmaInit
from .aconv_unet import PAPER_UNET_SIGMA_BOUNDS, PAPER_UNET_SIGMA_INIT
from .model_card import TimmAconvModelCard

__all__ = ['PaperUNet', 'PaperUNetDecoder', 'PaperUNetEncoder', 'SeparableConv2d']


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # Keras BatchNormalization defaults


class SeparableConv2d(nn.Sequential):
    """Keras ``SeparableConv2D``: depthwise k×k (no bias) then pointwise 1×1 (with bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1),
        )


class _DownBlock(nn.Module):
    """[ELU → separable 3×3 → BN]×2 → max-pool 3/2, plus a 1×1 stride-2 conv of the input."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ELU(),
            SeparableConv2d(in_channels, out_channels),
            _batch_norm(out_channels),
            nn.ELU(),
            SeparableConv2d(out_channels, out_channels),
            _batch_norm(out_channels),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class _UpBlock(nn.Module):
    """[ELU → transposed 3×3 → BN]×2 → upsample ×2, plus the input upsampled ×2 through a 1×1 conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ELU(),
            nn.ConvTranspose2d(in_channels, out_channels, 3, padding=1),
            _batch_norm(out_channels),
            nn.ELU(),
            nn.ConvTranspose2d(out_channels, out_channels, 3, padding=1),
            _batch_norm(out_channels),
            nn.Upsample(scale_factor=2.0),
        )
        self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2.0), nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class PaperUNetEncoder(nn.Module):
    """Entry conv (adaptive or ordinary) → BN → ELU, then the down blocks; returns every stage."""

    def __init__(
        self,
        in_channels: int = 3,
        entry_channels: int = 32,
        block_channels: Sequence[int] = (48, 64, 96),
        entry_kernel_size: int = 7,
        adaptive: bool = True,
        sigma_init: SigmaInit = PAPER_UNET_SIGMA_INIT,
        sigma_bounds: Tuple[float, float] = PAPER_UNET_SIGMA_BOUNDS,
        covariance_type: str = 'spherical',
    ):
        super().__init__()
        conv_args = dict(stride=2, padding=entry_kernel_size // 2, bias=False)
        if adaptive:
            entry = AdaptiveConv2d(
                in_channels,
                entry_channels,
                entry_kernel_size,
                sigma_init=sigma_init,
                sigma_bounds=sigma_bounds,
                covariance_type=covariance_type,
                **conv_args,
            )
        else:
            entry = nn.Conv2d(in_channels, entry_channels, entry_kernel_size, **conv_args)
        self.entry = nn.Sequential(entry, _batch_norm(entry_channels), nn.ELU())
        widths = [entry_channels, *block_channels]
        self.blocks = nn.ModuleList(_DownBlock(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.out_channels = [in_channels, *widths]

    @property
    def output_stride(self) -> int:
        return 2 ** (len(self.blocks) + 1)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = [x]
        x = self.entry(x)
        features.append(x)
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


class PaperUNetDecoder(nn.Module):
    """The up blocks, applied to the deepest encoder feature (no encoder–decoder skips)."""

    def __init__(self, in_channels: int, block_channels: Sequence[int] = (96, 64, 48, 32)):
        super().__init__()
        widths = [in_channels, *block_channels]
        self.blocks = nn.Sequential(*(_UpBlock(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:])))

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        return self.blocks(features[-1])


class PaperUNet(TimmAconvModelCard, SegmentationModel):
    """The paper's U-Net (the Keras example's Xception-style U-Net) with an adaptive entry conv.

    Args:
        in_channels: input channels.
        classes: output logits per pixel (the paper: 3, the Oxford-IIIT Pet trimap classes).
        entry_kernel_size: kernel (grid) size of the entry convolution (the paper: 7).
        adaptive: entry conv is an :class:`AdaptiveConv2d` (ACONV) or an ordinary ``nn.Conv2d``
            (the CONV baselines: 7×7, and the Keras example's 3×3).
        sigma_init, sigma_bounds: the adaptive entry conv's apertures and clamp range (the
            authors' U-Net: (0.1, 0.25) and [1/7, 5]).
        covariance_type: the adaptive entry conv's envelope: 'spherical' (default, the paper's), 'diag' or
            'full' (:mod:`timm_aconv.layers.covariance`).
        encoder_channels: widths of the entry conv and the down blocks (the paper: 32, 48/64/96;
            the Keras example: 32, 64/128/256).
        decoder_channels: widths of the up blocks (the paper: 96/64/48/32; Keras: 256/128/64/32).
    """

    requires_divisible_input_shape = True

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 3,
        entry_kernel_size: int = 7,
        adaptive: bool = True,
        sigma_init: SigmaInit = PAPER_UNET_SIGMA_INIT,
        sigma_bounds: Tuple[float, float] = PAPER_UNET_SIGMA_BOUNDS,
        covariance_type: str = 'spherical',
        encoder_channels: Sequence[int] = (32, 48, 64, 96),
        decoder_channels: Sequence[int] = (96, 64, 48, 32),
    ):
        super().__init__()
        if len(encoder_channels) < 2 or len(decoder_channels) != len(encoder_channels):
            raise ValueError(
                f'PaperUNet: encoder_channels (entry width, then one width per down block) and decoder_channels '
                f'(one width per up block) must have the same length >= 2, so the output has the input size; '
                f'got encoder_channels={tuple(encoder_channels)}, decoder_channels={tuple(decoder_channels)}'
            )
        self.encoder = PaperUNetEncoder(
            in_channels,
            encoder_channels[0],
            encoder_channels[1:],
            entry_kernel_size=entry_kernel_size,
            adaptive=adaptive,
            sigma_init=sigma_init,
            sigma_bounds=sigma_bounds,
            covariance_type=covariance_type,
        )
        self.decoder = PaperUNetDecoder(encoder_channels[-1], decoder_channels)
        self.segmentation_head = nn.Conv2d(decoder_channels[-1], classes, 3, padding=1)
        self.classification_head = None
        self.name = f'paper-unet-{"aconv" if adaptive else "conv"}{entry_kernel_size}'
        self._init_keras_style()

    def _init_keras_style(self) -> None:
        """Keras' defaults: glorot-uniform kernels, zero biases (BN: ones and zeros already)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
