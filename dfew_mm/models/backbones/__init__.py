"""Backbones by name: `model.video.arch` and `model.audio.arch` resolve to a family here.

    vision  resnet18|resnet34|resnet50   torchvision (ImageNet)              resnet.py
            timm/<model name>            any timm model                      timm_models.py
            hf/<repo id or folder>       CLIP/SigLIP vision tower, DINOv2    hf_vision.py
    speech  ast                          AST on the stored filterbank        ast.py
            fbank_cnn                    a small CNN on the filterbank       fbank_cnn.py
            hf/<repo id or folder>       WavLM, HuBERT, wav2vec 2.0          wav2vec2.py
            hf/<repo id or folder>       Whisper's encoder                   whisper.py

A new family is one file (a Backbone subclass, see base.py) plus its line in a registry below.
Building never downloads; `backbone.load_pretrained(cfg)` is the separate loading step.
"""

from __future__ import annotations

from typing import Iterable

from dfew_mm.errors import ConfigError
from dfew_mm.models.backbones import hub
from dfew_mm.models.backbones.ast import ASTBackbone
from dfew_mm.models.backbones.base import (FREEZE_POLICIES, Backbone, SpeechBackbone, SpeechSpec, VisionBackbone,
                                           VisionSpec, apply_tuning)
from dfew_mm.models.backbones.fbank_cnn import FbankCNNBackbone
from dfew_mm.models.backbones.hf_vision import HFVisionBackbone
from dfew_mm.models.backbones.resnet import ResNetBackbone
from dfew_mm.models.backbones.timm_models import TimmBackbone
from dfew_mm.models.backbones.wav2vec2 import Wav2Vec2Backbone
from dfew_mm.models.backbones.whisper import WhisperEncoderBackbone

VISION_BACKBONES: dict[str, type[VisionBackbone]] = {
    cls.family: cls for cls in (ResNetBackbone, TimmBackbone, HFVisionBackbone)}
SPEECH_BACKBONES: dict[str, type[SpeechBackbone]] = {
    cls.family: cls for cls in (ASTBackbone, FbankCNNBackbone, Wav2Vec2Backbone, WhisperEncoderBackbone)}

__all__ = ["FREEZE_POLICIES", "SPEECH_BACKBONES", "VISION_BACKBONES", "Backbone", "SpeechSpec", "VisionSpec",
           "build_speech_backbone", "build_vision_backbone", "speech_family", "speech_spec", "unknown_arch",
           "vision_family", "vision_spec"]


def unknown_arch(key: str, arch: str, families: Iterable[type[Backbone]]) -> ConfigError:
    """The error for an arch no family serves, listing the families with examples."""
    described = dict.fromkeys(f"{cls.describe}, e.g. {', '.join(cls.examples)}" for cls in families)
    return ConfigError(f"{key}.arch={arch!r} is not a known backbone. Families: " + "; ".join(described))


def vision_family(arch: str) -> type[VisionBackbone]:
    for cls in VISION_BACKBONES.values():
        if cls.matches(arch):
            return cls
    raise unknown_arch("model.video", arch, VISION_BACKBONES.values())


def speech_family(cfg) -> type[SpeechBackbone]:
    """The speech family of `cfg.arch`; `hf/...` names are told apart by their config's model_type."""
    found = [cls for cls in SPEECH_BACKBONES.values() if cls.matches(cfg.arch)]
    if not found:
        raise unknown_arch("model.audio", cfg.arch, SPEECH_BACKBONES.values())
    if len(found) == 1:
        return found[0]
    table = {name: entry for cls in found for name, entry in cls.published.items()}
    config, _ = hub.resolve_config(cfg.arch, cfg.checkpoint, table, "model.audio")
    for cls in found:
        if config.model_type in cls.model_types:
            return cls
    supported = sorted(t for cls in found for t in cls.model_types)
    raise ConfigError(f"model.audio.arch={cfg.arch} is a '{config.model_type}' model; the hf/ speech families "
                      f"support {', '.join(supported)}")


def build_vision_backbone(cfg) -> VisionBackbone:
    """`model.video` -> its backbone with random weights and the tuning policy applied (no download)."""
    backbone = vision_family(cfg.arch)(cfg)
    apply_tuning(backbone, cfg, "model.video")
    return backbone


def build_speech_backbone(cfg) -> SpeechBackbone:
    """`model.audio` -> its backbone with random weights and the tuning policy applied (no download)."""
    backbone = speech_family(cfg)(cfg)
    apply_tuning(backbone, cfg, "model.audio")
    return backbone


def vision_spec(cfg) -> VisionSpec:
    """The preprocessing a `model.video` backbone expects, resolved offline without building it."""
    return vision_family(cfg.arch).spec_for(cfg)


def speech_spec(cfg) -> SpeechSpec:
    return speech_family(cfg).spec_for(cfg)
