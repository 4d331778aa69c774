"""SMP's model card for the architectures registered here: its loading example imports timm_aconv

``save_pretrained`` / ``push_to_hub`` write SMP's model card (``README.md``), whose "Load trained
model" example calls ``smp.from_pretrained`` right after importing SMP. For ``AconvUnet`` and
``PaperUNet`` that fails (``smp.from_pretrained`` looks the class up on ``smp``, and only
``import timm_aconv`` puts it there), so :class:`TimmAconvModelCard` adds that import to the
example and the ``timm-aconv`` tag to the card's metadata.
"""

from typing import Any

__all__ = ['TimmAconvModelCard']

SMP_IMPORT = 'import segmentation_models_pytorch as smp\n'
TIMM_ACONV_IMPORT = 'import timm_aconv  # registers this architecture with SMP; before smp.from_pretrained\n'


class TimmAconvModelCard:
    """Mixin for SMP models (put it before the SMP base class): SMP's card, loadable as it says."""

    def generate_model_card(self, *args: Any, **kwargs: Any):
        card = super().generate_model_card(*args, **kwargs)
        card.text = card.text.replace(SMP_IMPORT, SMP_IMPORT + TIMM_ACONV_IMPORT, 1)
        card.data.tags = [*(card.data.tags or []), 'timm-aconv']
        return card
