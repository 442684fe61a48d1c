"""Models: the ViT encoder (2D/3D patches, sin-cos or RoPE positions) and the JEPA predictor."""
from engine.models.predictor import Predictor, build_predictor
from engine.models.vit import VIT_SIZES, VisionTransformer

__all__ = ["Predictor", "VIT_SIZES", "VisionTransformer", "build_predictor"]
