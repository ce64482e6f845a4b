"""Perception tasks on VisionLLaMA backbones: classification, semantic segmentation (FPN head on
multi-scale features) and detection (torchvision Faster R-CNN), with synthetic shape data."""
from vlgen.tasks.classification import VisionLLaMAClassifier
from vlgen.tasks.detection import create_detector
from vlgen.tasks.segmentation import VisionLLaMASegmenter

__all__ = ["VisionLLaMAClassifier", "VisionLLaMASegmenter", "create_detector"]
