"""Models: per-modality encoders (and the modality registry), temporal fusion, the assembled EmotionModel."""

from dfew_mm.models.classifier import EmotionModel, build_model, load_pretrained
from dfew_mm.models.encoders import ENCODERS, resolve_modalities

__all__ = ["ENCODERS", "EmotionModel", "build_model", "load_pretrained", "resolve_modalities"]
