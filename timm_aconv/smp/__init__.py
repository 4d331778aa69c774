""" segmentation-models-pytorch registrations (imported by timm_aconv when SMP is installed) """
