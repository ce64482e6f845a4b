"""FID-50K evaluation (ADM protocol) on torch-fidelity's Inception: FID, sFID, IS, KID, precision/recall."""
from vlgen.evaluation.frechet import feature_statistics, frechet_distance
from vlgen.evaluation.images import open_images, to_uint8
from vlgen.evaluation.inception import InceptionFeatures
from vlgen.evaluation.metrics import METRICS, evaluate
from vlgen.evaluation.reference import load_reference

__all__ = ["evaluate", "METRICS", "frechet_distance", "feature_statistics", "InceptionFeatures", "load_reference",
           "open_images", "to_uint8"]
