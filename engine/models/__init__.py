"""Model registry: ResNet-18/34/50 (torchvision parameter names) and a small fast net; heads."""

from engine.models import resnet, small  # noqa: F401  (registers the builders)
from engine.models.heads import AttentionHead, AvgHead, ClassifierHead, EmptyMaskError, GeMHead, MaxHead
from engine.models.registry import create_model, list_models, register_model
from engine.models.split import SplitNet

__all__ = ["create_model", "list_models", "register_model", "SplitNet", "ClassifierHead", "MaxHead", "AvgHead",
           "GeMHead", "AttentionHead", "EmptyMaskError"]
