"""Audio encoder: the Audio Spectrogram Transformer (AST) on the stored 128-bin filterbank.

AST cuts the (F, 128) filterbank into 16x16 patches with stride 10 in time and frequency
(one time column per 100 ms). Its patch tokens are averaged over frequency and pooled into
`tokens_per_second` time steps with timestamps in seconds, so fusion can line them up with
video frames.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ASTConfig, ASTModel

from dfew_mm.config import AudioEncoderConfig
from dfew_mm.constants import AST_FBANK_MEAN, AST_FBANK_STD, AUDIO_FRAMES_PER_SECOND, N_MELS
from dfew_mm.errors import AssetError

log = logging.getLogger(__name__)

PATCH, STRIDE = 16, 10  # AST patch side and stride, in filterbank frames / bins
N_SPECIAL_TOKENS = 2  # AST prepends a CLS and a distillation token


def ast_config(cfg: AudioEncoderConfig) -> ASTConfig:
    return ASTConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                     num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                     patch_size=PATCH, frequency_stride=STRIDE, time_stride=STRIDE,
                     num_mel_bins=N_MELS, max_length=cfg.max_length)


class AudioEncoder(nn.Module):
    """(B, F, 128) filterbank + (B, F) mask -> tokens (B, T_a, D), mask (B, T_a), times (B, T_a) s."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.ast = ASTModel(ast_config(cfg))
        self.output_dim = cfg.hidden_size
        self.n_freq = (N_MELS - PATCH) // STRIDE + 1
        self.n_time = (cfg.max_length - PATCH) // STRIDE + 1
        seconds = cfg.max_length / AUDIO_FRAMES_PER_SECOND
        self.n_tokens = max(1, round(seconds * cfg.tokens_per_second))
        self.apply_freeze()

    @property
    def pretrained(self) -> bool:
        return self.cfg.pretrained

    def frozen_modules(self) -> list[nn.Module]:
        if self.cfg.freeze == "all":
            return [self.ast]
        if self.cfg.freeze == "all_but_last":
            return [self.ast.embeddings, *self.ast.layers[:-1]]
        return []

    def apply_freeze(self) -> None:
        for module in self.frozen_modules():
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> "AudioEncoder":
        super().train(mode)
        for module in self.frozen_modules():  # no dropout in frozen layers
            module.eval()
        return self

    def forward(self, audio: torch.Tensor, mask: torch.Tensor,
                start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, f = audio.shape[:2]
        x = (audio.float() - AST_FBANK_MEAN) / (2 * AST_FBANK_STD)  # AST's own input scaling
        x = x * mask.unsqueeze(-1)  # padding becomes the dataset mean (0), as in AST's extractor
        valid = mask.float()
        if f < self.cfg.max_length:
            x = F.pad(x, (0, 0, 0, self.cfg.max_length - f))
            valid = F.pad(valid, (0, self.cfg.max_length - f))
        x, valid = x[:, :self.cfg.max_length], valid[:, :self.cfg.max_length]
        hidden = self.ast(input_values=x).last_hidden_state[:, N_SPECIAL_TOKENS:]  # (B, n_freq*n_time, D)
        hidden = hidden.view(b, self.n_freq, self.n_time, -1).mean(1)  # (B, n_time, D)
        tokens = F.adaptive_avg_pool1d(hidden.transpose(1, 2), self.n_tokens).transpose(1, 2)  # (B, T_a, D)
        # A token is valid when real (non-padding) audio covers at least half of its span.
        coverage = F.adaptive_avg_pool1d(valid.unsqueeze(1), self.n_tokens).squeeze(1)  # (B, T_a)
        span = self.cfg.max_length / AUDIO_FRAMES_PER_SECOND / self.n_tokens  # seconds per token
        times = (torch.arange(self.n_tokens, device=audio.device) + 0.5) * span  # (T_a,)
        times = times.expand(b, -1) + (start.view(b, 1) if start is not None else 0.0)
        return tokens, coverage >= 0.5, times


def build_audio_encoder(cfg: AudioEncoderConfig) -> AudioEncoder:
    return AudioEncoder(cfg)


def _fit_position_embeddings(pos: torch.Tensor, n_freq: int, n_time: int) -> torch.Tensor:
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


def load_audio_weights(encoder: AudioEncoder, cfg: AudioEncoderConfig) -> None:
    """AudioSet AST weights from the Hugging Face id or local folder in `cfg.checkpoint`."""
    if not cfg.pretrained:
        return
    try:
        source = ASTModel.from_pretrained(cfg.checkpoint)
    except (OSError, ValueError) as err:
        raise AssetError(
            f"could not load AST weights '{cfg.checkpoint}' ({err}). Offline: on a machine with internet run "
            f"`huggingface-cli download {cfg.checkpoint} --local-dir DIR`, copy DIR here and set "
            "model.audio.checkpoint=DIR (or HF_HUB_OFFLINE=1 with a filled cache), "
            "or set model.audio.pretrained=false."
        ) from err
    state = source.state_dict()
    key = "embeddings.position_embeddings"
    if source.config.num_mel_bins != N_MELS or source.config.patch_size != PATCH:
        raise AssetError(f"{cfg.checkpoint} uses {source.config.num_mel_bins} mel bins / patch "
                         f"{source.config.patch_size}; the store has {N_MELS} bins and patch {PATCH} is expected")
    state[key] = _fit_position_embeddings(state[key], encoder.n_freq, encoder.n_time)
    try:
        encoder.ast.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise AssetError(f"{cfg.checkpoint} does not fit model.audio (hidden_size, num_layers, num_heads, "
                         f"intermediate_size must match the checkpoint): {err}") from err
    log.info("audio encoder: loaded %s (position embeddings fitted to %d time patches)", cfg.checkpoint,
             encoder.n_time)
