"""wav2vec 2.0-style speech encoders on the 16 kHz waveform (`model.audio.arch=hf/<repo id or folder>`):
WavLM, HuBERT, wav2vec 2.0.

The waveform goes through the model's convolutional feature encoder (one frame per 20 ms) and
transformer; the last hidden states of the frames that hold real audio are averaged into the
encoder's time tokens. Input normalisation and padding masks follow the checkpoint's
`Wav2Vec2FeatureExtractor` settings: `do_normalize` (zero mean, unit variance per clip over its
valid samples) and `return_attention_mask` (models with a group-norm feature encoder were
trained on zero-padded batches without one). Layer drop is switched off (every layer runs in
every step, which DistributedDataParallel needs); set `model.audio.arch_kwargs.layerdrop` to
change that.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import AutoModel, HubertConfig, Wav2Vec2FeatureExtractor, WavLMConfig

from dfew_mm.constants import AUDIO_FRAMES_PER_SECOND, SAMPLE_RATE
from dfew_mm.errors import AssetError, ConfigError
from dfew_mm.models.backbones import hub
from dfew_mm.models.backbones.base import (SpeechBackbone, SpeechSpec, attention_projections, load_state_strict,
                                           masked_pool,
                                           with_overrides)

log = logging.getLogger(__name__)
KEY = "model.audio"
MODEL_TYPES = ("wavlm", "hubert", "wav2vec2")
NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor's variance floor
_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
             feat_extract_norm="group", conv_dim=[512] * 7, conv_stride=[5, 2, 2, 2, 2, 2, 2],
             conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_bias=False, num_conv_pos_embeddings=128,
             num_conv_pos_embedding_groups=16, do_stable_layer_norm=False)
PUBLISHED = {
    # WavLM Base+ was pretrained on unnormalised waveforms (its authors, microsoft/unilm#708); the hub's
    # preprocessor_config.json: do_normalize false, return_attention_mask true.
    "microsoft/wavlm-base-plus": hub.Published(
        WavLMConfig, dict(_BASE, num_buckets=320, max_bucket_distance=800),
        Wav2Vec2FeatureExtractor, dict(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                       do_normalize=False, return_attention_mask=True),
        "https://huggingface.co/microsoft/wavlm-base-plus"),
    # HuBERT Base: fairseq pretraining used unnormalised waveforms (task.normalize=false) and a group-norm
    # feature encoder trained without padding masks.
    "facebook/hubert-base-ls960": hub.Published(
        HubertConfig, dict(_BASE, feat_proj_layer_norm=True),
        Wav2Vec2FeatureExtractor, dict(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                       do_normalize=False, return_attention_mask=False),
        "https://huggingface.co/facebook/hubert-base-ls960"),
}


def spec_from_extractor(proc, source: str) -> SpeechSpec:
    if proc.sampling_rate != SAMPLE_RATE:
        raise ConfigError(f"{source}: the model expects {proc.sampling_rate} Hz; the store keeps {SAMPLE_RATE} Hz")
    return SpeechSpec(input="waveform", sampling_rate=proc.sampling_rate, do_normalize=bool(proc.do_normalize),
                      return_attention_mask=bool(proc.return_attention_mask), source=source)


def normalise_waveform(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N) -> zero mean, unit variance over each clip's valid samples; padding stays 0 (as the extractor)."""
    m = mask.to(x.dtype)
    n = m.sum(1, keepdim=True).clamp_min(1)  # (B, 1) valid samples
    mean = (x * m).sum(1, keepdim=True) / n
    var = ((x - mean).square() * m).sum(1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + NORM_EPS) * m


class Wav2Vec2Backbone(SpeechBackbone):
    family = "hf-wav2vec2"
    describe = "hf/<repo id or local folder> of a WavLM, HuBERT or wav2vec 2.0 model (16 kHz waveform)"
    examples = tuple(f"hf/{name}" for name in PUBLISHED)
    published = PUBLISHED
    model_types = MODEL_TYPES

    def __init__(self, cfg):
        super().__init__(cfg.arch, cfg.max_length / AUDIO_FRAMES_PER_SECOND)
        config, self.config_source = hub.resolve_config(cfg.arch, cfg.checkpoint, PUBLISHED, KEY)
        if config.model_type not in MODEL_TYPES:
            raise ConfigError(f"{KEY}.arch={cfg.arch} is a '{config.model_type}' model, not one of {MODEL_TYPES}")
        config = with_overrides(config, {"layerdrop": 0.0, **cfg.arch_kwargs}, KEY, cfg.arch)
        self.model = AutoModel.from_config(config)
        self.output_dim = config.hidden_size
        self.spec = self.spec_for(cfg)
        self.window_samples = round(self.window_seconds * self.spec.sampling_rate)
        # WavLM's attention hands its q/k/v weights to F.multi_head_attention_forward without calling the
        # Linear layers, so adapters there would never run: its feed-forward layers get them instead.
        self.lora_targets = (("intermediate_dense", "output_dense") if config.model_type == "wavlm"
                             else attention_projections(self.model))
        self._overridden = set(cfg.arch_kwargs) | {"layerdrop"}

    @classmethod
    def matches(cls, arch: str) -> bool:
        return arch.startswith(hub.HF_PREFIX) and len(arch) > len(hub.HF_PREFIX)

    @classmethod
    def spec_for(cls, cfg) -> SpeechSpec:
        proc, source = hub.resolve_processor(cfg.arch, cfg.checkpoint, PUBLISHED, KEY, "audio")
        return spec_from_extractor(proc, source)

    def blocks(self) -> list[nn.Module]:
        return list(self.model.encoder.layers)

    def forward(self, wave: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        if wave.dim() != 2:
            raise ValueError(f"{self.arch} reads the (B, N) 16 kHz waveform, got {tuple(wave.shape)}")
        x = wave.float()[:, :self.window_samples] * mask[:, :self.window_samples]  # (B, N')
        m = mask[:, :self.window_samples]
        pad = self.window_samples - x.shape[1]
        if pad > 0:
            x, m = nn.functional.pad(x, (0, pad)), nn.functional.pad(m, (0, pad))
        if self.spec.do_normalize:
            x = normalise_waveform(x, m)
        attention = None
        if self.spec.return_attention_mask:  # a clip without audio attends to its zeros (its tokens are masked)
            attention = (m | ~m.any(1, keepdim=True)).long()
        hidden = self.model(input_values=x, attention_mask=attention).last_hidden_state  # (B, L, D)
        lengths = self.model._get_feat_extract_output_lengths(m.sum(1))  # (B,) valid frames
        valid = torch.arange(hidden.shape[1], device=hidden.device) < lengths.unsqueeze(1)  # (B, L)
        return masked_pool(hidden, valid, n_tokens)

    def load_pretrained(self, cfg) -> None:
        if not cfg.pretrained:  # model.audio.checkpoint names where the weights come from, not whether
            return
        source_model, source = hub.load_hf_model(self.arch, cfg.checkpoint, KEY)
        hub.check_published_config(self.model.config, source_model.config, self.arch, PUBLISHED, self._overridden)
        proc = hub.fetch_processor(source, "audio")
        if proc is not None:
            theirs = spec_from_extractor(proc, f"{source} (preprocessor_config.json)")
            if theirs.settings() != self.spec.settings():
                raise AssetError(f"{self.arch}: the model was built with {self.spec} but the weights' feature "
                                 f"extractor says {theirs}; the cache now holds the weights' settings: run again")
        load_state_strict(self.model, source_model.state_dict(), source, f"{self.arch} ({KEY}.arch, arch_kwargs)")
        log.info("audio backbone %s: loaded %s", self.arch, source)
