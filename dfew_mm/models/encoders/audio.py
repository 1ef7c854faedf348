"""Audio: a speech backbone (`model.audio.arch`, see dfew_mm.models.backbones) pooled into time-stamped tokens.

Store: `audio` (F, 128) float16 Kaldi filterbank (10 ms frames) and, for waveform encoders,
`waveform` (N,) int16 16 kHz samples (store format 2). A sample takes a window of
`data.audio_frames` filterbank frames (at random in training) and, for a waveform encoder, the
same window of samples. The model window is `model.audio.max_length` frames (5.12 s by default):
AST reads the filterbank, waveform encoders (WavLM, HuBERT, Whisper) the samples in [-1, 1].
Either way the backbone's outputs are pooled into `tokens_per_second` tokens over the window, with
timestamps in seconds of clip time (shifted by `audio_start` after a random crop), so fusion can
line them up with video frames; a token is valid when real audio covers at least half of its span.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from dfew_mm.constants import (AUDIO_FRAMES_PER_SECOND, HOP_SAMPLES, MAX_AUDIO_FRAMES, N_MELS, WAVEFORM_ARRAY,
                               WAVEFORM_SCALE)
from dfew_mm.errors import ConfigError
from dfew_mm.models.backbones import SPEECH_BACKBONES, SpeechSpec, build_speech_backbone, speech_spec, unknown_arch
from dfew_mm.models.encoders.base import BackboneConfig, Encoder, Frames, Tokens, check_tuning

MIN_COVERAGE = 0.5  # share of a token's span that must hold real audio for the token to count
LEGACY_PREFIX, PREFIX = "ast.", "backbone.model."  # AST weights before the speech registry / now
ADD_WAVEFORM = "python preprocess/extract.py --add-waveform --dfew-root ROOT --out STORE"


@dataclass
class AudioEncoderConfig(BackboneConfig):
    # ast (filterbank) | hf/<Hugging Face repo id or local folder> of a WavLM, HuBERT, wav2vec 2.0 or Whisper
    # model (16 kHz waveform); `checkpoint` "" = the arch's own weights (ast: AudioSet AST)
    arch: str = "ast"
    # AST architecture (arch=ast); the AudioSet checkpoint is 768 / 12 / 12 / 3072.
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    # The clip window in 10 ms frames: the filterbank frames AST sees (padded/cropped), or max_length * 160
    # waveform samples; >= data.audio_frames
    max_length: int = 512
    tokens_per_second: float = 4.0  # encoder outputs are pooled to this rate for fusion


def crop_audio(fbank: np.ndarray, n_out: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(F, 128) -> (n_out, 128) zero-padded, its (n_out,) mask, and the start frame of the crop."""
    start = 0
    if len(fbank) > n_out:
        start = int(rng.integers(0, len(fbank) - n_out + 1)) if rng is not None else 0
        fbank = fbank[start:start + n_out]
    out = np.empty((n_out, N_MELS), dtype=np.float32)
    out[:len(fbank)] = fbank
    out[len(fbank):] = 0.0
    mask = np.zeros(n_out, dtype=bool)
    mask[:len(fbank)] = True
    return out, mask, start


def crop_waveform(samples: np.ndarray, start_frame: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int16 -> the n_frames x HOP_SAMPLES samples from filterbank frame `start_frame` (the same
    window as the filterbank crop) as float32 in [-1, 1), zero-padded, and their (n,) mask."""
    n_out = n_frames * HOP_SAMPLES
    part = samples[start_frame * HOP_SAMPLES:start_frame * HOP_SAMPLES + n_out]
    out = np.zeros(n_out, np.float32)
    out[:len(part)] = part / WAVEFORM_SCALE
    mask = np.zeros(n_out, bool)
    mask[:len(part)] = True
    return out, mask


def reads_waveform(cfg: AudioEncoderConfig) -> bool:
    """Whether the backbone reads the stored 16 kHz waveform (else the filterbank)."""
    return speech_spec(cfg).input == "waveform"


class AudioEncoder(Encoder):
    """Sample: audio (F, 128) float32 filterbank (not yet normalised), audio_mask (F,) bool, false for padding
    and clips without audio, audio_start float seconds of clip time at audio[0]; for a waveform encoder also
    waveform (F x 160,) float32 in [-1, 1) and waveform_mask (F x 160,) bool. F = data.audio_frames.
    Tokens: (B, T_a, D), mask (B, T_a), times (B, T_a) seconds."""

    name = "audio"
    Config = AudioEncoderConfig
    cacheable = True
    ranges = {
        "hidden_size": (1, 1 << 16, False),
        "num_layers": (1, 256, False),
        "num_heads": (1, 1024, False),
        "intermediate_size": (1, 1 << 18, False),
        "max_length": (1, MAX_AUDIO_FRAMES, False),
        "tokens_per_second": (0.0, 1000.0, True),
    }

    @classmethod
    def check_config(cls, cfg: AudioEncoderConfig, data=None) -> None:
        if not any(family.matches(cfg.arch) for family in SPEECH_BACKBONES.values()):
            raise unknown_arch("model.audio", cfg.arch, SPEECH_BACKBONES.values())
        check_tuning(cfg, "model.audio")
        if not cfg.pretrained and cfg.hidden_size % cfg.num_heads:
            raise ConfigError(f"model.audio.hidden_size={cfg.hidden_size} must be divisible by "
                              f"model.audio.num_heads={cfg.num_heads}")
        if data is not None and data.audio_frames > cfg.max_length:
            raise ConfigError(f"data.audio_frames={data.audio_frames} exceeds model.audio.max_length="
                              f"{cfg.max_length}: raise model.audio.max_length or lower data.audio_frames")

    @classmethod
    def store_arrays(cls, cfg: AudioEncoderConfig) -> tuple[str, ...]:
        # the filterbank's length places the crop window even for a waveform encoder
        return ("audio", WAVEFORM_ARRAY) if reads_waveform(cfg) else ("audio",)

    @classmethod
    def store_problems(cls, cfg: AudioEncoderConfig, face_size: int, arrays) -> list[str]:
        if reads_waveform(cfg) and WAVEFORM_ARRAY not in arrays:
            return [f"model.audio.arch={cfg.arch} reads the 16 kHz waveform, and the store has no "
                    f"'{WAVEFORM_ARRAY}' array (a store of format 1). Add it without redoing faces and pose: "
                    f"`{ADD_WAVEFORM}`; or use model.audio.arch=ast, which reads the stored filterbank"]
        return super().store_problems(cfg, face_size, arrays)

    @classmethod
    def cut(cls, cfg: AudioEncoderConfig, arrays: Mapping[str, np.ndarray], frames: Frames) -> dict:
        audio, mask, start = crop_audio(arrays["audio"], frames.data.audio_frames, frames.rng)
        sample = {"audio": torch.from_numpy(audio), "audio_mask": torch.from_numpy(mask),
                  "audio_start": start / AUDIO_FRAMES_PER_SECOND}
        if WAVEFORM_ARRAY in arrays:  # read only for a waveform encoder (store_arrays)
            wave, wave_mask = crop_waveform(arrays[WAVEFORM_ARRAY], start, frames.data.audio_frames)
            sample.update(waveform=torch.from_numpy(wave), waveform_mask=torch.from_numpy(wave_mask))
        return sample

    @classmethod
    def absent(cls, cfg: AudioEncoderConfig, frames: Frames) -> dict:
        n = frames.data.audio_frames
        return {"audio": torch.zeros(n, N_MELS), "audio_mask": torch.zeros(n, dtype=torch.bool), "audio_start": 0.0}

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__(cfg)
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

    def forward(self, audio: torch.Tensor, mask: torch.Tensor,
                start: torch.Tensor | None = None) -> Tokens:
        """`audio`/`mask` are what `input_keys` name: the filterbank for AST, the waveform otherwise."""
        b = audio.shape[0]
        tokens, coverage = self.backbone(audio, mask, self.n_tokens)  # (B, T_a, D), (B, T_a)
        times = (torch.arange(self.n_tokens, device=audio.device) + 0.5) * self.span  # (T_a,) token centres
        times = times.expand(b, -1) + (start.view(b, 1) if start is not None else 0.0)
        return tokens, coverage >= MIN_COVERAGE, times

    def encode(self, batch) -> Tokens:
        data, mask = self.input_keys
        if data not in batch:
            raise KeyError(f"model.audio.arch={self.cfg.arch} reads batch['{data}'], which this batch lacks")
        return self(batch[data], batch[mask], batch.get("audio_start"))


def _rename_legacy_ast_keys(module, state_dict, prefix, *args) -> None:
    """Checkpoints written before the speech registry kept AST under `ast.`; it now lives in `backbone.model.`."""
    for key in [k for k in state_dict if k.startswith(prefix + LEGACY_PREFIX)]:
        state_dict[prefix + PREFIX + key[len(prefix + LEGACY_PREFIX):]] = state_dict.pop(key)
