"""Audio features: 128-bin Kaldi log-mel filterbank at 16 kHz, 10 ms hop, as the AST encoder expects.

Stored without mean/std normalisation (the AST statistics in constants are applied at training
time) and as float16 to halve the store size; fbank values lie in about -20..+15, well within
float16 range and precision.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torchaudio

from dfew_mm.constants import HOP_MS, N_MELS, SAMPLE_RATE, WAVEFORM_SCALE, WINDOW_MS

_MIN_SAMPLES = SAMPLE_RATE * WINDOW_MS // 1000  # one 25 ms window


def log_mel_fbank(samples: np.ndarray) -> np.ndarray:
    """(N,) float32 16 kHz mono in [-1, 1] -> (F, 128) float16, F = 1 + (N - 400) // 160; (0, 128) if too short."""
    if samples.size < _MIN_SAMPLES:
        return np.zeros((0, N_MELS), np.float16)
    waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).unsqueeze(0)  # (1, N)
    with torch.no_grad(), _one_torch_thread():
        waveform = waveform - waveform.mean()  # remove DC, as AST's own preprocessing does
        fbank = torchaudio.compliance.kaldi.fbank(
            waveform, htk_compat=True, sample_frequency=SAMPLE_RATE, use_energy=False,
            window_type="hanning", num_mel_bins=N_MELS, dither=0.0,
            frame_length=WINDOW_MS, frame_shift=HOP_MS)  # (F, 128)
    return fbank.numpy().astype(np.float16)


@contextmanager
def _one_torch_thread():
    """One torch thread, whatever the caller's: a reduction split over threads rounds differently, and the same
    clip must give the same filterbank in an extraction worker (one thread) and in `predict` (all cores).
    A few ms of work per clip, where a thread pool on a busy machine only adds waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def waveform_int16(samples: np.ndarray) -> np.ndarray:
    """(N,) float 16 kHz mono in [-1, 1] -> (N,) int16, what the store keeps for waveform speech encoders.

    int16 is the resolution of the source tracks (16-bit AAC/PCM) at half the bytes of float32:
    about 32 kB per second of audio.
    """
    return np.clip(np.round(np.asarray(samples, np.float32) * WAVEFORM_SCALE), -32768, 32767).astype(np.int16)
