"""A small 2-D CNN over the stored 128-bin filterbank, for training from scratch (`model.audio.arch=fbank_cnn`).

Small data trained from scratch favours a convolutional network over a transformer: local
time-frequency filters and BatchNorm need no pretraining to learn voice quality, pitch and
energy contours from a few hundred utterances. `model.audio.num_layers` blocks of 3x3
convolution with stride 2, BatchNorm and ReLU halve time and frequency (a strided convolution
rather than max pooling: on a CPU it costs a fraction as much); the channels double
per block up to `model.audio.hidden_size` in the last one. The first block is the stem, the
others are the `blocks()` that `freeze: last_blocks` counts. Each remaining time step keeps its
frequency layout (flattened, then projected to hidden_size), so where in the spectrum energy
sits (pitch, formants) still reaches the tokens. A bidirectional GRU over those steps
(`model.audio.arch_kwargs.gru`, on by default) adds context beyond the convolutions' 0.3 s:
prosody and tempo, which carry much of vocal emotion. The window is `model.audio.max_length` frames
(padded or cropped, as for AST); the steps are pooled into the encoder's time tokens over the
steps that hold real audio. There are no published weights: `model.audio.checkpoint` may name
a state dict of this network trained elsewhere.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from dfew_mm.constants import AST_FBANK_MEAN, AST_FBANK_STD, AUDIO_FRAMES_PER_SECOND, N_MELS, SAMPLE_RATE
from dfew_mm.errors import AssetError, ConfigError
from dfew_mm.models.backbones.base import (SpeechBackbone, SpeechSpec, load_state_strict, masked_pool,
                                           read_state_file)

log = logging.getLogger(__name__)
KEY = "model.audio"
ARCH_KWARGS = {"gru": True}  # model.audio.arch_kwargs of fbank_cnn, with their defaults
MIN_CHANNELS = 8  # the first blocks' width when hidden_size / 2^(num_layers - 1) would be smaller


def channels(width: int, n_blocks: int) -> list[int]:
    """Output channels of each block, doubling up to `width` in the last: (64, 4) -> [8, 16, 32, 64]."""
    return [max(MIN_CHANNELS, width >> (n_blocks - 1 - i)) for i in range(n_blocks)]


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class FbankCNNBackbone(SpeechBackbone):
    family = "fbank_cnn"
    describe = "fbank_cnn (a small 2-D CNN over the stored filterbank, from scratch)"
    examples = ("fbank_cnn",)

    def __init__(self, cfg):
        super().__init__(cfg.arch, cfg.max_length / AUDIO_FRAMES_PER_SECOND)
        self.max_length = cfg.max_length
        if not 2 <= cfg.num_layers < N_MELS.bit_length():
            raise ConfigError(f"{KEY}.num_layers={cfg.num_layers}: fbank_cnn has a stem and at least one block, and "
                              f"halves the {N_MELS} bins in each, so 2..{N_MELS.bit_length() - 1} fit")
        unknown = sorted(set(cfg.arch_kwargs) - set(ARCH_KWARGS))
        if unknown:
            raise ConfigError(f"{KEY}.arch_kwargs.{unknown[0]}: fbank_cnn takes {', '.join(ARCH_KWARGS)}")
        widths = channels(cfg.hidden_size, cfg.num_layers)
        self.stem = ConvBlock(1, widths[0])
        self.layers = nn.ModuleList(ConvBlock(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.n_freq = N_MELS >> cfg.num_layers  # bins left after the poolings
        self.project = nn.Sequential(nn.Linear(widths[-1] * self.n_freq, cfg.hidden_size), nn.ReLU(inplace=True))
        self.gru = (nn.GRU(cfg.hidden_size, cfg.hidden_size // 2, batch_first=True, bidirectional=True)
                    if cfg.arch_kwargs.get("gru", ARCH_KWARGS["gru"]) else None)
        self.output_dim = cfg.hidden_size
        self.spec = self.spec_for(cfg)
        self.register_buffer("fbank_mean", torch.tensor(self.spec.mean), persistent=False)
        self.register_buffer("fbank_scale", torch.tensor(2 * self.spec.std), persistent=False)

    @classmethod
    def matches(cls, arch: str) -> bool:
        return arch == "fbank_cnn"

    @classmethod
    def spec_for(cls, cfg) -> SpeechSpec:
        """The filterbank scaled as AST scales it (AudioSet statistics), so both read the same store alike."""
        return SpeechSpec(input="fbank", sampling_rate=SAMPLE_RATE, do_normalize=True, return_attention_mask=False,
                          mean=AST_FBANK_MEAN, std=AST_FBANK_STD, source="AudioSet filterbank statistics (as AST)")

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def forward(self, audio: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        if audio.dim() != 3:
            raise ValueError(f"the fbank_cnn backbone reads the (B, F, {N_MELS}) filterbank, got {tuple(audio.shape)}")
        f = audio.shape[1]
        x = (audio.float() - self.fbank_mean) / self.fbank_scale * mask.unsqueeze(-1)  # padding -> 0, the mean
        valid = mask.float()
        if f < self.max_length:
            x, valid = F.pad(x, (0, 0, 0, self.max_length - f)), F.pad(valid, (0, self.max_length - f))
        x, valid = x[:, :self.max_length], valid[:, :self.max_length]
        x = self.stem(x.unsqueeze(1))  # (B, 1, F, 128) -> (B, C, F / 2, 64): time is the height, mel bins the width
        for block in self.layers:
            x = block(x)  # (B, C, F / 2^k, 128 / 2^k)
        b, c, t = x.shape[:3]
        x = self.project(x.permute(0, 2, 1, 3).reshape(b, t, c * self.n_freq))  # (B, T', D)
        steps = F.adaptive_avg_pool1d(valid.unsqueeze(1), t).squeeze(1) >= 0.5  # (B, T') mostly real audio
        if self.gru is not None:  # over the real steps only (they come first); padding keeps its features
            lengths = steps.sum(1).clamp_min(1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            context, _ = self.gru(packed)
            x = x + nn.utils.rnn.pad_packed_sequence(context, batch_first=True, total_length=t)[0]  # (B, T', D)
        return masked_pool(x, steps, n_tokens)  # (B, n_tokens, D), (B, n_tokens)

    def load_pretrained(self, cfg) -> None:
        """Weights of this network from `cfg.checkpoint` (a state dict); there are no published ones."""
        if not cfg.pretrained:
            return
        if not cfg.checkpoint:
            raise AssetError(f"{KEY}.arch=fbank_cnn has no published weights: set {KEY}.pretrained=false to train "
                             f"it from scratch, or point {KEY}.checkpoint at a state dict of this network")
        state = read_state_file(cfg.checkpoint, f"{KEY}.checkpoint")
        load_state_strict(self, state, str(cfg.checkpoint), f"fbank_cnn ({KEY}.hidden_size, num_layers must match)")
        log.info("audio backbone fbank_cnn: loaded %s", cfg.checkpoint)
