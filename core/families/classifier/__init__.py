"""The classification-CNN family: torchvision-style CNNs, the digits demos and ``module:function``."""

from core.families.classifier.family import ClassifierFamily

__all__ = ["ClassifierFamily"]
