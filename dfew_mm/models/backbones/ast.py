"""Audio Spectrogram Transformer on the stored 128-bin Kaldi filterbank (`model.audio.arch=ast`).

AST cuts the (F, 128) filterbank into 16x16 patches with stride 10 in time and frequency (one
time column per 100 ms). Its patch tokens are averaged over frequency and pooled into the
encoder's time tokens. The architecture comes from `model.audio.hidden_size/num_layers/...`
(the AudioSet checkpoint is the default, 768/12/12/3072); the position embeddings of a
checkpoint trained on 1024 frames are cropped or interpolated to `model.audio.max_length`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

from dfew_mm.constants import AST_FBANK_MEAN, AST_FBANK_STD, AUDIO_FRAMES_PER_SECOND, N_MELS, SAMPLE_RATE
from dfew_mm.errors import AssetError
from dfew_mm.models.backbones import hub
from dfew_mm.models.backbones.base import SpeechBackbone, SpeechSpec, attention_projections, load_state_strict

log = logging.getLogger(__name__)
KEY = "model.audio"
AST_CHECKPOINT = "MIT/ast-finetuned-audioset-10-10-0.4593"  # AudioSet, the default weights
PATCH, STRIDE = 16, 10  # AST patch side and stride, in filterbank frames / bins
N_SPECIAL_TOKENS = 2  # AST prepends a CLS and a distillation token
PUBLISHED = {AST_CHECKPOINT: hub.Published(
    ASTConfig, dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    patch_size=PATCH, frequency_stride=STRIDE, time_stride=STRIDE, num_mel_bins=N_MELS),
    ASTFeatureExtractor, dict(num_mel_bins=N_MELS, sampling_rate=SAMPLE_RATE, mean=AST_FBANK_MEAN,
                              std=AST_FBANK_STD, do_normalize=True, max_length=1024),
    "https://huggingface.co/MIT/ast-finetuned-audioset-10-10-0.4593")}


def ast_config(cfg) -> ASTConfig:
    return ASTConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                     num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                     patch_size=PATCH, frequency_stride=STRIDE, time_stride=STRIDE,
                     num_mel_bins=N_MELS, max_length=cfg.max_length)


def ast_source(cfg) -> str:
    return cfg.checkpoint or AST_CHECKPOINT


def fit_position_embeddings(pos: torch.Tensor, n_freq: int, n_time: int) -> torch.Tensor:
    """(1, 2 + n_freq * T_ckpt, D) -> (1, 2 + n_freq * n_time, D): crop the time axis, or interpolate it."""
    special, patches = pos[:, :N_SPECIAL_TOKENS], pos[:, N_SPECIAL_TOKENS:]
    d = pos.shape[-1]
    t_ckpt = patches.shape[1] // n_freq
    grid = patches.reshape(1, n_freq, t_ckpt, d)  # (1, F', T', D)
    if n_time <= t_ckpt:
        grid = grid[:, :, :n_time]
    else:
        grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(n_freq, n_time), mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)
    return torch.cat([special, grid.reshape(1, n_freq * n_time, d)], dim=1)


class ASTBackbone(SpeechBackbone):
    family = "ast"
    describe = "ast (Audio Spectrogram Transformer on the stored filterbank, AudioSet weights)"
    examples = ("ast",)
    published = PUBLISHED

    def __init__(self, cfg):
        super().__init__(cfg.arch, cfg.max_length / AUDIO_FRAMES_PER_SECOND)
        self.max_length = cfg.max_length
        self.model = ASTModel(ast_config(cfg))
        self.output_dim = cfg.hidden_size
        self.lora_targets = attention_projections(self.model)
        self.n_freq = (N_MELS - PATCH) // STRIDE + 1
        self.n_time = (cfg.max_length - PATCH) // STRIDE + 1
        self.spec = self.spec_for(cfg)
        self.register_buffer("fbank_mean", torch.tensor(self.spec.mean), persistent=False)
        self.register_buffer("fbank_scale", torch.tensor(2 * self.spec.std), persistent=False)

    @classmethod
    def matches(cls, arch: str) -> bool:
        return arch == "ast"

    @classmethod
    def spec_for(cls, cfg) -> SpeechSpec:
        """AST's feature-extractor statistics: from the checkpoint's own settings when they are on disk."""
        try:
            proc, source = hub.resolve_processor(hub.HF_PREFIX + ast_source(cfg), "", PUBLISHED, KEY, "audio")
        except Exception:  # noqa: BLE001 - another AST checkpoint not on disk: AudioSet statistics
            proc, source = PUBLISHED[AST_CHECKPOINT].build_processor(), f"AudioSet statistics ({AST_CHECKPOINT})"
        return SpeechSpec(input="fbank", sampling_rate=proc.sampling_rate, do_normalize=bool(proc.do_normalize),
                          return_attention_mask=False, mean=float(proc.mean), std=float(proc.std), source=source)

    def blocks(self) -> list[nn.Module]:
        return list(self.model.layers)

    def forward(self, audio: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        if audio.dim() != 3:
            raise ValueError(f"the ast backbone reads the (B, F, {N_MELS}) filterbank, got {tuple(audio.shape)}")
        b, f = audio.shape[:2]
        x = (audio.float() - self.fbank_mean) / self.fbank_scale  # AST's own input scaling
        x = x * mask.unsqueeze(-1)  # padding becomes the dataset mean (0), as in AST's extractor
        valid = mask.float()
        if f < self.max_length:
            x = F.pad(x, (0, 0, 0, self.max_length - f))
            valid = F.pad(valid, (0, self.max_length - f))
        x, valid = x[:, :self.max_length], valid[:, :self.max_length]
        hidden = self.model(input_values=x).last_hidden_state[:, N_SPECIAL_TOKENS:]  # (B, n_freq*n_time, D)
        hidden = hidden.view(b, self.n_freq, self.n_time, -1).mean(1)  # (B, n_time, D)
        tokens = F.adaptive_avg_pool1d(hidden.transpose(1, 2), n_tokens).transpose(1, 2)  # (B, T_a, D)
        coverage = F.adaptive_avg_pool1d(valid.unsqueeze(1), n_tokens).squeeze(1)  # (B, T_a)
        return tokens, coverage

    def load_pretrained(self, cfg) -> None:
        """AST weights from the Hugging Face id or local folder in `cfg.checkpoint` (AudioSet by default)."""
        if not cfg.pretrained:
            return
        source = ast_source(cfg)
        try:
            model = ASTModel.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise AssetError(f"could not load AST weights '{source}' ({err}). "
                             + hub.offline_advice(hub.HF_PREFIX + source, KEY, source)) from err
        if model.config.num_mel_bins != N_MELS or model.config.patch_size != PATCH:
            raise AssetError(f"{source} uses {model.config.num_mel_bins} mel bins / patch "
                             f"{model.config.patch_size}; the store has {N_MELS} bins and patch {PATCH} is expected")
        state = model.state_dict()
        key = "embeddings.position_embeddings"
        state[key] = fit_position_embeddings(state[key], self.n_freq, self.n_time)
        load_state_strict(self.model, state, source, f"{KEY} (hidden_size, num_layers, num_heads, intermediate_size "
                          "must match the checkpoint)")
        log.info("audio backbone ast: loaded %s (position embeddings fitted to %d time patches)", source, self.n_time)
