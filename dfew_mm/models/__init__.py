"""Models: per-modality encoders (and the modality registry), temporal fusion, the assembled EmotionModel.

The names below are imported on first use (PEP 562), so that `dfew_mm.models.encoders`, which code
reading predictions or modality names needs, comes without torch.
"""

from importlib import import_module

_HOMES = {"EmotionModel": "classifier", "build_model": "classifier", "load_pretrained": "classifier",
          "ENCODERS": "encoders", "resolve_modalities": "encoders"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
