"""Decode one clip once: T uniformly spaced RGB frames plus the audio track at 16 kHz mono.

decord is the main decoder (it seeks to the sampled frames only); containers it cannot open
(GIF, some broken files) fall back to PyAV, which decodes sequentially and keeps the sampled frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfew_mm.constants import SAMPLE_RATE

log = logging.getLogger(__name__)


class DecodeError(Exception):
    """A clip cannot be decoded; the message says why (it becomes the manifest `error`)."""


@dataclass
class DecodedClip:
    frames: list[np.ndarray]  # T frames (H, W, 3) uint8 RGB; a repeated index repeats the same array
    frame_index: np.ndarray  # (T,) int32, index of each sampled frame in the clip
    frame_time: np.ndarray  # (T,) float32 seconds
    n_frames: int  # frames in the clip
    fps: float
    width: int
    height: int
    audio: np.ndarray  # (N,) float32 in [-1, 1], 16 kHz mono; (0,) without an audio track
    has_audio: bool
    backend: str  # "decord" or "pyav"
    notes: list[str] = field(default_factory=list)  # degradations worth a line in the manifest

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps if self.fps > 0 else 0.0


def sample_indices(n_frames: int, t: int) -> np.ndarray:
    """Centres of T equal segments of the clip; clips shorter than T repeat frames."""
    if n_frames <= 0:
        raise DecodeError("the video stream has no frames")
    centres = (np.arange(t) + 0.5) * n_frames / t
    return np.minimum(centres.astype(np.int64), n_frames - 1).astype(np.int32)


def decode_clip(path: Path, t: int) -> DecodedClip:
    """Decode the T sampled frames and the audio of `path`; raise DecodeError with a reason."""
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        return _decode_decord(path, t)
    except Exception as decord_err:  # decord raises bare RuntimeErrors/DECORDErrors for bad input
        log.debug("decord cannot decode %s (%s); trying PyAV", path, decord_err)
        try:
            return _decode_pyav(path, t)
        except Exception as av_err:
            raise DecodeError(f"cannot decode video (decord: {_short(decord_err)}; "
                              f"PyAV: {_short(av_err)})") from av_err


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


# -- decord ----------------------------------------------------------------------------------
def _decode_decord(path: Path, t: int) -> DecodedClip:
    from decord import AudioReader, VideoReader, cpu

    reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    n_frames, fps = len(reader), float(reader.get_avg_fps())
    index = sample_indices(n_frames, t)
    frames = _read_frames(reader, index)
    times = reader.get_frame_timestamp(index.tolist())[:, 0].astype(np.float32)  # frame start, s
    height, width = frames[0].shape[:2]
    del reader
    try:
        audio = AudioReader(str(path), ctx=cpu(0), sample_rate=SAMPLE_RATE, mono=True)
        samples = audio[:].asnumpy().reshape(-1).astype(np.float32)  # (N,)
        has_audio = samples.size > 0
    except Exception as err:  # decord raises when the container has no audio stream
        log.debug("%s: no decodable audio via decord (%s)", path, err)
        samples, has_audio = _audio_pyav(path)
    return DecodedClip(frames, index, times, n_frames, fps, width, height, samples, has_audio, "decord")


def _read_frames(reader, index: np.ndarray) -> list[np.ndarray]:
    """The frames at `index` (ascending), each decoded once, as arrays sharing decord's buffers.

    `get_batch(index).asnumpy()` decodes the same way but then copies every frame twice, into one
    batch buffer and into fresh numpy memory (~100 MB each for 16 frames at 1080p); the copies and
    the kernel zeroing their pages cost about a fifth of the decoding. DLPack hands each decoded
    frame over instead (the array keeps its buffer alive).
    """
    from torch.utils.dlpack import from_dlpack

    decoded: dict[int, np.ndarray] = {}
    for i in dict.fromkeys(index.tolist()):  # unique, in order: seeks only forwards
        reader.seek_accurate(i)  # decodes without converting up to frame i (no-op when already there)
        decoded[i] = from_dlpack(reader.next().to_dlpack()).numpy()  # (H, W, 3)
    return [decoded[i] for i in index.tolist()]


# -- PyAV fallback ---------------------------------------------------------------------------
def _decode_pyav(path: Path, t: int) -> DecodedClip:
    """Sequential decoding: a first pass counts the decodable frames (a truncated file keeps the
    frames before the damage), a second keeps the sampled ones."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        declared = stream.frames  # 0 when the container does not say
        n_frames = sum(1 for _ in _frames_until_error(container, stream))
    index = sample_indices(n_frames, t)
    wanted = {int(i) for i in index}
    kept: dict[int, np.ndarray] = {}
    kept_time: dict[int, float] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(_frames_until_error(container, stream)):
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
                kept_time[i] = float(frame.time) if frame.time is not None else i / fps
            if i >= index[-1]:
                break
    if len(kept) < len(wanted):
        raise DecodeError(f"only {len(kept)} of {len(wanted)} sampled frames could be decoded")
    frames = [kept[int(i)] for i in index]
    times = np.array([kept_time[int(i)] for i in index], dtype=np.float32)
    samples, has_audio = _audio_pyav(path)
    height, width = frames[0].shape[:2]
    notes = [f"truncated: {n_frames} of {declared} frames decodable"] if declared > n_frames else []
    return DecodedClip(frames, index, times, n_frames, fps, width, height, samples, has_audio, "pyav", notes)


def _frames_until_error(container, stream):
    """Decoded frames of `stream`, stopping quietly where the data is damaged or cut off."""
    try:
        yield from container.decode(stream)
    except Exception as err:  # PyAV raises InvalidDataError/EOFError subclasses at the damage
        log.debug("decoding stopped early: %s", err)


def _audio_pyav(path: Path) -> tuple[np.ndarray, bool]:
    """The first audio stream resampled to 16 kHz mono float32, or an empty array if none.

    A damaged or cut-off track keeps the audio decoded before the damage.
    """
    import av

    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return np.zeros(0, np.float32), False
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in _frames_until_error(container, container.streams.audio[0]):
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    except Exception as err:
        log.debug("%s: audio track not decodable (%s)", path, err)
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return samples, samples.size > 0
