"""Whisper's encoder on the 16 kHz waveform (`model.audio.arch=hf/openai/whisper-base`, ...).

Whisper's feature extractor is computed on device, exactly as `WhisperFeatureExtractor` does it:
the clip is zero-padded to 30 s, a 400-point STFT with a 160-sample hop gives power spectra,
Slaney mel filters (80 or 128 bins, from the checkpoint's settings) and log10, values below the
clip's maximum minus 8 are raised to it, then (x + 4) / 4. The encoder always sees the full 30 s
(it was trained that way and checks it); only its frames inside the clip window (one per 20 ms)
are pooled into tokens, those past the clip's real audio are masked.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from dfew_mm.constants import AUDIO_FRAMES_PER_SECOND, SAMPLE_RATE
from dfew_mm.errors import AssetError, ConfigError
from dfew_mm.models.backbones import hub
from dfew_mm.models.backbones.base import (SpeechBackbone, SpeechSpec, attention_projections, load_state_strict,
                                           masked_pool,
                                           with_overrides)

log = logging.getLogger(__name__)
KEY = "model.audio"
MODEL_TYPES = ("whisper",)
LOG_FLOOR_DB = 8.0  # log10 units below the clip maximum that Whisper keeps
_EXTRACTOR = dict(feature_size=80, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=30, n_fft=400,
                  padding_value=0.0, return_attention_mask=False)
PUBLISHED = {
    "openai/whisper-base": hub.Published(
        WhisperConfig, dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                            num_mel_bins=80, max_source_positions=1500, activation_function="gelu",
                            scale_embedding=False),
        WhisperFeatureExtractor, _EXTRACTOR, "https://huggingface.co/openai/whisper-base"),
    "openai/whisper-small": hub.Published(
        WhisperConfig, dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072,
                            num_mel_bins=80, max_source_positions=1500, activation_function="gelu",
                            scale_embedding=False),
        WhisperFeatureExtractor, _EXTRACTOR, "https://huggingface.co/openai/whisper-small"),
}


def spec_from_extractor(proc, source: str) -> SpeechSpec:
    if proc.sampling_rate != SAMPLE_RATE:
        raise ConfigError(f"{source}: the model expects {proc.sampling_rate} Hz; the store keeps {SAMPLE_RATE} Hz")
    return SpeechSpec(input="waveform", sampling_rate=proc.sampling_rate, do_normalize=False,
                      return_attention_mask=False, n_mels=proc.feature_size, n_fft=proc.n_fft,
                      hop_length=proc.hop_length, chunk_seconds=float(proc.chunk_length), source=source)


class WhisperEncoderBackbone(SpeechBackbone):
    family = "hf-whisper"
    describe = "hf/<repo id or local folder> of a Whisper model (its encoder, on the 16 kHz waveform)"
    examples = tuple(f"hf/{name}" for name in PUBLISHED)
    published = PUBLISHED
    model_types = MODEL_TYPES

    def __init__(self, cfg):
        super().__init__(cfg.arch, cfg.max_length / AUDIO_FRAMES_PER_SECOND)
        config, self.config_source = hub.resolve_config(cfg.arch, cfg.checkpoint, PUBLISHED, KEY)
        if config.model_type not in MODEL_TYPES:
            raise ConfigError(f"{KEY}.arch={cfg.arch} is a '{config.model_type}' model, not Whisper")
        config = with_overrides(config, cfg.arch_kwargs, KEY, cfg.arch)
        self.model = WhisperEncoder(config)
        self.output_dim = config.d_model
        self.lora_targets = attention_projections(self.model)
        self.spec = self.spec_for(cfg)
        if config.num_mel_bins != self.spec.n_mels:
            raise ConfigError(f"{cfg.arch}: the encoder takes {config.num_mel_bins} mel bins, its feature extractor "
                              f"makes {self.spec.n_mels}")
        if self.window_seconds > self.spec.chunk_seconds:
            raise ConfigError(f"{KEY}.max_length={cfg.max_length} frames ({self.window_seconds:.1f} s) exceeds "
                              f"Whisper's {self.spec.chunk_seconds:.0f} s input")
        self.n_samples = round(self.spec.chunk_seconds * self.spec.sampling_rate)  # 480,000 at 30 s
        self.samples_per_frame = self.spec.hop_length * 2  # the encoder's second conv has stride 2: 20 ms
        self.window_samples = round(self.window_seconds * self.spec.sampling_rate)
        self.window_frames = math.ceil(self.window_samples / self.samples_per_frame)
        extractor = WhisperFeatureExtractor(feature_size=self.spec.n_mels, sampling_rate=self.spec.sampling_rate,
                                            hop_length=self.spec.hop_length, n_fft=self.spec.n_fft,
                                            chunk_length=int(self.spec.chunk_seconds))
        self.register_buffer("mel_filters", torch.from_numpy(extractor.mel_filters).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.spec.n_fft), persistent=False)
        self._overridden = set(cfg.arch_kwargs)

    @classmethod
    def matches(cls, arch: str) -> bool:
        return arch.startswith(hub.HF_PREFIX) and len(arch) > len(hub.HF_PREFIX)

    @classmethod
    def spec_for(cls, cfg) -> SpeechSpec:
        proc, source = hub.resolve_processor(cfg.arch, cfg.checkpoint, PUBLISHED, KEY, "audio")
        return spec_from_extractor(proc, source)

    def blocks(self) -> list[nn.Module]:
        return list(self.model.layers)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, n_samples) zero-padded waveform -> (B, n_mels, n_samples / hop) Whisper input features."""
        with torch.autocast(wave.device.type, enabled=False):  # float32 throughout, as the extractor
            stft = torch.stft(wave.float(), self.spec.n_fft, self.spec.hop_length, window=self.window,
                              return_complex=True)  # (B, n_fft / 2 + 1, frames + 1)
            power = stft[..., :-1].abs().square()  # (B, n_fft / 2 + 1, frames)
            mel = self.mel_filters.T @ power  # (B, n_mels, frames)
            log_spec = mel.clamp_min(1e-10).log10()
            peak = log_spec.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1) per clip
            log_spec = torch.maximum(log_spec, peak - LOG_FLOOR_DB)
            return (log_spec + 4.0) / 4.0

    def forward(self, wave: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        if wave.dim() != 2:
            raise ValueError(f"{self.arch} reads the (B, N) 16 kHz waveform, got {tuple(wave.shape)}")
        x = wave.float()[:, :self.window_samples] * mask[:, :self.window_samples]  # (B, N')
        n_valid = mask[:, :self.window_samples].sum(1)  # (B,)
        x = nn.functional.pad(x, (0, self.n_samples - x.shape[1]))  # (B, 30 s of samples)
        features = self.log_mel(x)  # (B, n_mels, 3000)
        hidden = self.model(input_features=features.to(self.model.conv1.weight.dtype)).last_hidden_state
        hidden = hidden[:, :self.window_frames]  # (B, window frames, D): 20 ms each
        lengths = torch.ceil(n_valid / self.samples_per_frame)  # (B,) frames holding real audio
        valid = torch.arange(hidden.shape[1], device=hidden.device) < lengths.unsqueeze(1)  # (B, L)
        return masked_pool(hidden, valid, n_tokens)

    def load_pretrained(self, cfg) -> None:
        if not cfg.pretrained:  # model.audio.checkpoint names where the weights come from, not whether
            return
        source_model, source = hub.load_hf_model(self.arch, cfg.checkpoint, KEY)
        encoder = source_model.get_encoder() if hasattr(source_model, "get_encoder") else source_model
        hub.check_published_config(self.model.config, source_model.config, self.arch, PUBLISHED, self._overridden)
        proc = hub.fetch_processor(source, "audio")
        if proc is not None:
            theirs = spec_from_extractor(proc, f"{source} (preprocessor_config.json)")
            if theirs.settings() != self.spec.settings():
                raise AssetError(f"{self.arch}: the model was built with {self.spec} but the weights' feature "
                                 f"extractor says {theirs}; the cache now holds the weights' settings: run again")
        load_state_strict(self.model, encoder.state_dict(), source, f"{self.arch} ({KEY}.arch, arch_kwargs)")
        log.info("audio backbone %s: loaded %s", self.arch, source)
