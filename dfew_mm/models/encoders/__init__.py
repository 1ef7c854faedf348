"""Per-modality encoders and the registry that resolves `--modalities` names."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from dfew_mm.config import ModelConfig
from dfew_mm.errors import ConfigError
from dfew_mm.models.encoders.audio import build_audio_encoder, load_audio_weights
from dfew_mm.models.encoders.blendshapes import BlendshapeEncoder
from dfew_mm.models.encoders.pose import build_pose_encoder
from dfew_mm.models.encoders.video import build_video_encoder, load_video_weights

Builder = Callable[[ModelConfig], nn.Module]
WeightLoader = Callable[[nn.Module, ModelConfig], None]

# name -> (build from the model config, load pretrained weights into the built encoder)
ENCODERS: dict[str, tuple[Builder, WeightLoader | None]] = {
    "video": (lambda cfg: build_video_encoder(cfg.video), lambda enc, cfg: load_video_weights(enc, cfg.video)),
    "pose": (lambda cfg: build_pose_encoder(cfg.pose), None),
    "audio": (lambda cfg: build_audio_encoder(cfg.audio), lambda enc, cfg: load_audio_weights(enc, cfg.audio)),
    "blendshapes": (lambda cfg: BlendshapeEncoder(cfg.blendshapes), None),
}


def resolve_modalities(names: Sequence[str] | str) -> list[str]:
    """'video,pose' or ['video', 'pose'] -> checked list in a canonical order."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"no modality given: choose a non-empty subset of {', '.join(ENCODERS)}")
    unknown = [n for n in names if n not in ENCODERS]
    if unknown:
        raise ConfigError(f"unknown modality {', '.join(unknown)}: valid modalities are {', '.join(ENCODERS)}")
    return [n for n in ENCODERS if n in names]


def build_encoder(name: str, cfg: ModelConfig) -> nn.Module:
    return ENCODERS[resolve_modalities([name])[0]][0](cfg)
