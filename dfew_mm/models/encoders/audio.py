"""Audio encoder: a speech backbone (`model.audio.arch`, see dfew_mm.models.backbones) pooled into
time-stamped tokens.

The clip window is `model.audio.max_length` filterbank frames of 10 ms (5.12 s by default). AST
reads the stored filterbank `batch["audio"]` (B, F, 128) with `audio_mask`; waveform encoders
(WavLM, HuBERT, Whisper) read `batch["waveform"]` (B, N) float in [-1, 1] at 16 kHz with
`waveform_mask` (B, N) bool. Either way the backbone's outputs are pooled into
`tokens_per_second` tokens over the window, with timestamps in seconds of clip time (shifted by
`audio_start` after a random crop), so fusion can line them up with video frames; a token is
valid when real audio covers at least half of its span.
"""

from __future__ import annotations

import torch
from torch import nn

from dfew_mm.batch import Batch
from dfew_mm.config import AudioEncoderConfig
from dfew_mm.constants import AUDIO_FRAMES_PER_SECOND
from dfew_mm.models.backbones import SpeechSpec, build_speech_backbone
from dfew_mm.models.backbones.base import frozen_modules

MIN_COVERAGE = 0.5  # share of a token's span that must hold real audio for the token to count
LEGACY_PREFIX, PREFIX = "ast.", "backbone.model."  # AST weights before the speech registry / now


class AudioEncoder(nn.Module):
    """(B, F, 128) filterbank or (B, N) waveform + its mask -> tokens (B, T_a, D), mask (B, T_a), times (B, T_a) s."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_speech_backbone(cfg)
        self.spec: SpeechSpec = self.backbone.spec
        self.output_dim = self.backbone.output_dim
        self.input_keys = ("audio", "audio_mask") if self.spec.input == "fbank" else ("waveform", "waveform_mask")
        seconds = cfg.max_length / AUDIO_FRAMES_PER_SECOND
        self.n_tokens = max(1, round(seconds * cfg.tokens_per_second))
        self.span = seconds / self.n_tokens  # seconds per token
        self.register_load_state_dict_pre_hook(_rename_legacy_ast_keys)

    @property
    def pretrained(self) -> bool:
        return self.cfg.pretrained  # model.audio.checkpoint only says where the weights come from

    def load_pretrained(self, cfg: AudioEncoderConfig | None = None) -> None:
        self.backbone.load_pretrained(cfg or self.cfg)

    def train(self, mode: bool = True) -> "AudioEncoder":
        super().train(mode)
        if mode:
            for module in frozen_modules(self.backbone):  # no dropout in frozen layers
                module.eval()
        return self

    def forward(self, audio: torch.Tensor, mask: torch.Tensor,
                start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`audio`/`mask` are what `input_keys` name: the filterbank for AST, the waveform otherwise."""
        b = audio.shape[0]
        tokens, coverage = self.backbone(audio, mask, self.n_tokens)  # (B, T_a, D), (B, T_a)
        times = (torch.arange(self.n_tokens, device=audio.device) + 0.5) * self.span  # (T_a,) token centres
        times = times.expand(b, -1) + (start.view(b, 1) if start is not None else 0.0)
        return tokens, coverage >= MIN_COVERAGE, times

    def tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens, mask, timestamps from a batch; cached embeddings when the batch has them."""
        if "audio_emb" in batch:
            return batch["audio_emb"], batch["audio_emb_mask"], batch["audio_emb_time"]
        data, mask = self.input_keys
        if data not in batch:
            raise KeyError(f"model.audio.arch={self.cfg.arch} reads batch['{data}'], which this batch lacks")
        return self(batch[data], batch[mask], batch.get("audio_start"))  # type: ignore[literal-required]


def _rename_legacy_ast_keys(module, state_dict, prefix, *args) -> None:
    """Checkpoints written before the speech registry kept AST under `ast.`; it now lives in `backbone.model.`."""
    for key in [k for k in state_dict if k.startswith(prefix + LEGACY_PREFIX)]:
        state_dict[prefix + PREFIX + key[len(prefix + LEGACY_PREFIX):]] = state_dict.pop(key)


def build_audio_encoder(cfg: AudioEncoderConfig) -> AudioEncoder:
    return AudioEncoder(cfg)


def load_audio_weights(encoder: AudioEncoder, cfg: AudioEncoderConfig) -> None:
    """Pretrained weights as `model.audio` asks (the registry's loading step)."""
    encoder.load_pretrained(cfg)
