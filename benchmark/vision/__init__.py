"""Frozen image encoders and their on-disk feature cache: vision-language tasks encode each image once,
so neither the encoder's weights nor its activations are part of training time or memory."""
from benchmark.vision.cache import FeatureCache, default_cache_root
from benchmark.vision.encoders import VISUAL_ENCODERS, VisionSpec, VisualEncoder, load_visual_encoder

__all__ = ["VisualEncoder", "VisionSpec", "VISUAL_ENCODERS", "load_visual_encoder",
           "FeatureCache", "default_cache_root"]
