"""Perception tasks on VisionLLaMA backbones: classification (segmentation and detection follow)."""
from vlgen.tasks.classification import VisionLLaMAClassifier

__all__ = ["VisionLLaMAClassifier"]
