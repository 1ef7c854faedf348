"""Tiny random-weight configs of every backbone family (real architectures shrunk, everything else as
published): built offline, they stand in for the real checkpoints in tests."""

from __future__ import annotations

import dataclasses

from dfew_mm.models.encoders.audio import AudioEncoderConfig
from dfew_mm.models.encoders.video import VideoEncoderConfig

S = 32  # px, tiny faces
SECONDS = 1.6  # audio window of the tiny speech configs
SR = 16_000
_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=S, patch_size=8)
VISION = {  # name -> tiny config of a real family member (architecture shrunk, everything else as published)
    "resnet18": dict(arch="resnet18"),
    "timm_vit": dict(arch="timm/test_vit", input_size=S),
    "timm_efficientnet": dict(arch="timm/test_efficientnet", input_size=S),
    "clip": dict(arch="hf/openai/clip-vit-base-patch16", arch_kwargs=dict(_VIT, intermediate_size=64), input_size=S),
    "siglip": dict(arch="hf/google/siglip-base-patch16-224", arch_kwargs=dict(_VIT, intermediate_size=64),
                   input_size=S),
    "dinov2": dict(arch="hf/facebook/dinov2-base", arch_kwargs=_VIT, input_size=S),
}
SSL = dict(  # WavLM / HuBERT (wav2vec 2.0 layout), shrunk
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=[32, 32],
    conv_kernel=[20, 20], conv_stride=[16, 20], num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
SPEECH = {
    "ast": dict(arch="ast", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
    "fbank_cnn": dict(arch="fbank_cnn", hidden_size=32, num_layers=3),
    "wavlm": dict(arch="hf/microsoft/wavlm-base-plus", arch_kwargs=dict(SSL, num_buckets=16, max_bucket_distance=32)),
    "hubert": dict(arch="hf/facebook/hubert-base-ls960", arch_kwargs=SSL),
    "whisper": dict(arch="hf/openai/whisper-base", arch_kwargs=dict(d_model=32, encoder_layers=2,
                                                                    encoder_attention_heads=2, encoder_ffn_dim=64)),
}
TRANSFORMERS_V = ("timm_vit", "clip", "siglip", "dinov2")
TRANSFORMERS_A = ("ast", "wavlm", "hubert", "whisper")


def video_cfg(name: str, **over) -> VideoEncoderConfig:
    return dataclasses.replace(VideoEncoderConfig(pretrained=False), **{**VISION[name], **over})


def audio_cfg(name: str, **over) -> AudioEncoderConfig:
    return dataclasses.replace(AudioEncoderConfig(pretrained=False, max_length=round(SECONDS * 100)),
                               **{**SPEECH[name], **over})
