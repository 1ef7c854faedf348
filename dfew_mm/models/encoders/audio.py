"""Audio: a speech backbone (`model.audio.arch`, see dfew_mm.models.backbones) pooled into time-stamped tokens.

Store: `audio` (F, 128) float16 Kaldi filterbank (10 ms frames) and, for waveform encoders,
`waveform` (N,) int16 16 kHz samples (store format 2). A training sample takes a window of
`data.audio_frames` filterbank frames at random and, for a waveform encoder, the same window of
samples. Evaluation reads `model.audio.eval_window`: the first window, the centre one, or `clip`:
`eval_windows` windows spread evenly over the clip (covering it when they are long enough), each
encoded alone, their tokens side by side, so the heads pool the whole clip. The model window is
`model.audio.max_length` frames (5.12 s by default): AST and fbank_cnn read the filterbank,
waveform encoders (WavLM, HuBERT, Whisper) the samples in [-1, 1]. Either way the backbone's
outputs are pooled into `tokens_per_second` tokens per window, with timestamps in seconds of clip
time (shifted by each window's `audio_start`), so fusion can line them up with video frames; a
token is valid when real audio covers at least half of its span.

`model.audio.normalise: utterance` standardises each mel bin over the clip's frames (before the
window is cut) and re-expresses it at the AudioSet statistics the filterbank backbones scale by:
the speaker's and the recording's spectral colour and level go, the contours stay. Training-time
augmentation (`data.augment`): SpecAugment time and frequency masks on the filterbank window
(filled with its mean) and, for waveform encoders, a random gain on the waveform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from dfew_mm.constants import (AST_FBANK_MEAN, AST_FBANK_STD, AUDIO_FRAMES_PER_SECOND, HOP_SAMPLES, MAX_AUDIO_FRAMES,
                               N_MELS, WAVEFORM_ARRAY, WAVEFORM_SCALE)
from dfew_mm.errors import ConfigError
from dfew_mm.models.backbones import SPEECH_BACKBONES, SpeechSpec, build_speech_backbone, speech_spec, unknown_arch
from dfew_mm.models.encoders.base import Augmentation, BackboneConfig, Encoder, Frames, Tokens, check_tuning

MIN_COVERAGE = 0.5  # share of a token's span that must hold real audio for the token to count
EVAL_WINDOWS = ("first", "centre", "clip")
NORMALISATIONS = ("dataset", "utterance", "level")
MIN_BIN_STD = 0.1  # log-mel units: a bin that hardly moves over the clip is centred, not blown up
LEGACY_PREFIX, PREFIX = "ast.", "backbone.model."  # AST weights before the speech registry / now
ADD_WAVEFORM = "python preprocess/extract.py --add-waveform --dfew-root ROOT --out STORE"


@dataclass
class AudioEncoderConfig(BackboneConfig):
    # ast | fbank_cnn (filterbank) | hf/<Hugging Face repo id or local folder> of a WavLM, HuBERT, wav2vec 2.0
    # or Whisper model (16 kHz waveform); `checkpoint` "" = the arch's own weights (ast: AudioSet AST)
    arch: str = "ast"
    # AST architecture (arch=ast); the AudioSet checkpoint is 768 / 12 / 12 / 3072. fbank_cnn: hidden_size is
    # its width (the last block's channels and the token size), num_layers its convolution blocks.
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    # The clip window in 10 ms frames: the filterbank frames AST sees (padded/cropped), or max_length * 160
    # waveform samples; >= data.audio_frames
    max_length: int = 512
    tokens_per_second: float = 4.0  # encoder outputs are pooled to this rate for fusion
    # evaluation (validation, evaluate, predict, embed): first | centre window of data.audio_frames, or
    # clip: eval_windows windows spread evenly over the clip, whose tokens the heads pool together (measured on
    # real speech: docs/audio.md)
    eval_window: str = "clip"
    eval_windows: int = 3
    # filterbank: dataset (the backbone's own scaling only) | utterance (per clip and mel bin) | level (per clip,
    # one mean and std over all bins: the loudness goes, the spectral shape stays)
    normalise: str = "dataset"
    # training-time augmentation (data.augment): SpecAugment masks of up to *_width frames / bins each
    time_masks: int = 2
    time_mask_width: int = 20
    freq_masks: int = 2
    freq_mask_width: int = 16
    gain_db: float = 6.0  # waveform encoders: a random gain in [-gain_db, +gain_db] dB


def window_starts(n_frames: int, n_out: int, rng: np.random.Generator | None, how: str = "first",
                  n_windows: int = 1) -> np.ndarray:
    """Start frames of the windows of n_out frames a sample takes from a clip of n_frames: one at random
    (training, `rng` given), else as `how` says (first, centre, clip: n_windows spread evenly from the
    first frame to the last; repeated starts, as in a clip shorter than one window, are kept once)."""
    spare = max(n_frames - n_out, 0)
    if rng is not None:
        return np.array([int(rng.integers(0, spare + 1)) if spare else 0])
    if how == "centre":
        return np.array([spare // 2])
    if how == "clip":
        return np.unique(np.round(np.linspace(0, spare, n_windows)).astype(np.int64))
    return np.array([0])


def normalise_utterance(fbank: np.ndarray, per_bin: bool = True) -> np.ndarray:
    """(F, 128) -> the same standardised over the clip (each bin alone, or all bins together), then at the
    AudioSet mean and std."""
    x = fbank.astype(np.float32)
    if not len(x):
        return x
    axis = 0 if per_bin else None
    std = np.maximum(x.std(axis), MIN_BIN_STD)  # (128,) or ()
    return (x - x.mean(axis)) / std * AST_FBANK_STD + AST_FBANK_MEAN


def crop_audio(fbank: np.ndarray, n_out: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(F, 128) -> the (n_out, 128) window from frame `start`, zero-padded, and its (n_out,) mask."""
    fbank = fbank[start:start + n_out]
    out = np.empty((n_out, N_MELS), dtype=np.float32)
    out[:len(fbank)] = fbank
    out[len(fbank):] = 0.0
    mask = np.zeros(n_out, dtype=bool)
    mask[:len(fbank)] = True
    return out, mask


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
        "eval_windows": (1, 64, False),
        "time_masks": (0, 64, False),
        "time_mask_width": (0, MAX_AUDIO_FRAMES, False),
        "freq_masks": (0, 64, False),
        "freq_mask_width": (0, N_MELS, False),
        "gain_db": (0.0, 60.0, False),
    }

    @classmethod
    def check_config(cls, cfg: AudioEncoderConfig, data=None) -> None:
        if not any(family.matches(cfg.arch) for family in SPEECH_BACKBONES.values()):
            raise unknown_arch("model.audio", cfg.arch, SPEECH_BACKBONES.values())
        check_tuning(cfg, "model.audio")
        for key, value, allowed in (("eval_window", cfg.eval_window, EVAL_WINDOWS),
                                    ("normalise", cfg.normalise, NORMALISATIONS)):
            if value not in allowed:
                raise ConfigError(f"model.audio.{key}={value!r} is not one of {', '.join(allowed)}")
        if cfg.arch == "ast" and not cfg.pretrained and cfg.hidden_size % cfg.num_heads:
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
        """One window (training: at random; evaluation: `first`, `centre`), or with `eval_window: clip` in
        evaluation K = eval_windows windows: audio (K, F, 128), audio_mask (K, F), audio_start (K,), the
        waveform (K, F x 160); windows a short clip does not fill are repeats, masked out."""
        fbank, n = arrays["audio"], frames.data.audio_frames
        if cfg.normalise != "dataset":
            fbank = normalise_utterance(fbank, per_bin=cfg.normalise == "utterance")
        starts = window_starts(len(fbank), n, frames.rng, cfg.eval_window, cfg.eval_windows)
        windows = [crop_audio(fbank, n, int(start)) for start in starts]
        waves = ([crop_waveform(arrays[WAVEFORM_ARRAY], int(start), n) for start in starts]
                 if WAVEFORM_ARRAY in arrays else None)  # read only for a waveform encoder (store_arrays)
        if not cls.windowed(cfg, frames):
            sample = {"audio": torch.from_numpy(windows[0][0]), "audio_mask": torch.from_numpy(windows[0][1]),
                      "audio_start": int(starts[0]) / AUDIO_FRAMES_PER_SECOND}
            if waves is not None:
                sample.update(waveform=torch.from_numpy(waves[0][0]), waveform_mask=torch.from_numpy(waves[0][1]))
            return sample
        sample = cls.absent(cfg, frames)  # (K, ...) all masked; the distinct windows fill the first rows
        k = len(starts)
        sample["audio"][:k] = torch.from_numpy(np.stack([w for w, _ in windows]))
        sample["audio_mask"][:k] = torch.from_numpy(np.stack([m for _, m in windows]))
        sample["audio_start"][:k] = torch.from_numpy(starts / AUDIO_FRAMES_PER_SECOND)
        if waves is not None:
            sample.update(waveform=torch.zeros(cfg.eval_windows, n * HOP_SAMPLES),
                          waveform_mask=torch.zeros(cfg.eval_windows, n * HOP_SAMPLES, dtype=torch.bool))
            sample["waveform"][:k] = torch.from_numpy(np.stack([w for w, _ in waves]))
            sample["waveform_mask"][:k] = torch.from_numpy(np.stack([m for _, m in waves]))
        return sample

    @classmethod
    def windowed(cls, cfg: AudioEncoderConfig, frames: Frames) -> bool:
        """Whether samples hold several windows: the deterministic sample with `eval_window: clip`."""
        return frames.rng is None and cfg.eval_window == "clip"

    @classmethod
    def absent(cls, cfg: AudioEncoderConfig, frames: Frames) -> dict:
        n = frames.data.audio_frames
        if cls.windowed(cfg, frames):
            k = cfg.eval_windows
            return {"audio": torch.zeros(k, n, N_MELS), "audio_mask": torch.zeros(k, n, dtype=torch.bool),
                    "audio_start": torch.zeros(k)}
        return {"audio": torch.zeros(n, N_MELS), "audio_mask": torch.zeros(n, dtype=torch.bool), "audio_start": 0.0}

    @classmethod
    def augment(cls, cfg: AudioEncoderConfig, part: dict, aug: Augmentation) -> dict:
        """SpecAugment: `time_masks` masks of up to `time_mask_width` frames and `freq_masks` of up to
        `freq_mask_width` bins on the filterbank window, filled with its mean over the real frames; a gain of
        up to +-`gain_db` dB on the waveform, which is all a waveform encoder reads. The masks follow
        torchaudio's mask_along_axis (width uniform in [0, max), start uniform over what is left), drawn from
        the sample's own generator as plain slices: torchaudio's call, with the torch generator seeded and
        restored around it, cost about 3 ms a clip and halved the loader's speed (docs/augmentation.md)."""
        part = dict(part)
        if "waveform" in part:
            if cfg.gain_db > 0:
                gain = 10.0 ** (aug.rng.uniform(-cfg.gain_db, cfg.gain_db) / 20.0)
                part["waveform"] = (part["waveform"] * gain).clamp(-1.0, 1.0)
            return part
        audio, mask = part["audio"].numpy(), part["audio_mask"].numpy()  # (F, 128), (F,)
        if mask.any() and (cfg.time_masks or cfg.freq_masks):
            fill = audio[mask].mean()
            audio = audio.copy()
            for axis, masks, width in ((0, cfg.time_masks, cfg.time_mask_width), (1, cfg.freq_masks, cfg.freq_mask_width)):
                size = audio.shape[axis]
                for _ in range(masks):
                    value = aug.rng.random() * min(width, size)
                    start = int(aug.rng.random() * (size - value))
                    stop = start + int(value)
                    if axis == 0:
                        audio[start:stop] = fill  # whole frames
                    else:
                        audio[:, start:stop] = fill  # whole mel bins
            part["audio"] = torch.from_numpy(audio)
        return part

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
        """`audio`/`mask` are what `input_keys` name: the filterbank for AST, the waveform otherwise; one window
        per clip, (B, ...) with `start` (B,), or K windows, (B, K, ...) with `start` (B, K)."""
        single = mask.dim() == 2
        if single:
            audio, mask = audio.unsqueeze(1), mask.unsqueeze(1)  # (B, 1, ...)
            start = start.unsqueeze(1) if start is not None else None
        b, k = mask.shape[:2]
        run = mask.any(-1)  # (B, K): windows with audio; the first of each clip always runs
        run[:, 0] = True
        tokens, coverage = self.backbone(audio[run], mask[run], self.n_tokens)  # (R, T_a, D), (R, T_a)
        if not single:  # scatter the windows that ran; the others stay masked
            tokens = tokens.new_zeros(b, k, *tokens.shape[1:]).index_put_((run,), tokens)
            coverage = coverage.new_zeros(b, k, self.n_tokens).index_put_((run,), coverage)
        tokens, coverage = tokens.reshape(b, k * self.n_tokens, -1), coverage.reshape(b, k * self.n_tokens)
        times = (torch.arange(self.n_tokens, device=audio.device) + 0.5) * self.span  # (T_a,) token centres
        times = times.expand(b, k, -1) + (start.view(b, k, 1) if start is not None else 0.0)  # (B, K, T_a)
        return tokens, coverage >= MIN_COVERAGE, times.reshape(b, k * self.n_tokens)

    def encode(self, batch) -> Tokens:
        data, mask = self.input_keys
        if data not in batch:
            raise KeyError(f"model.audio.arch={self.cfg.arch} reads batch['{data}'], which this batch lacks")
        return self(batch[data], batch[mask], batch.get("audio_start"))


def _rename_legacy_ast_keys(module, state_dict, prefix, *args) -> None:
    """Checkpoints written before the speech registry kept AST under `ast.`; it now lives in `backbone.model.`."""
    for key in [k for k in state_dict if k.startswith(prefix + LEGACY_PREFIX)]:
        state_dict[prefix + PREFIX + key[len(prefix + LEGACY_PREFIX):]] = state_dict.pop(key)
