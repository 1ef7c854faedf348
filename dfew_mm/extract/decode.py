"""Decode one clip once: T uniformly spaced RGB frames plus the audio track at 16 kHz mono.

decord is the main decoder (it seeks to the sampled frames only); containers it cannot open
(GIF, some broken files) fall back to PyAV, which decodes sequentially and keeps the sampled frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dfew_mm.constants import SAMPLE_RATE

log = logging.getLogger(__name__)


class DecodeError(Exception):
    """A clip cannot be decoded; the message says why (it becomes the manifest `error`)."""


@dataclass
class DecodedClip:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB; may live in a FrameBuffer (valid until its next clip)
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


class FrameBuffer:
    """Memory for the decoded frames of one clip at a time, reused from clip to clip (one per worker).

    Fresh memory for every clip (~100 MB for 16 frames at 1080p) costs the kernel zeroing its pages,
    and the allocator keeps freed frame-sized blocks, so a worker's resident set would creep up clip
    after clip (by ~0.4 GB over 14 DFEW sample clips).
    """

    def __init__(self):
        self._memory = np.empty(0, np.uint8)

    def frames(self, t: int, height: int, width: int) -> np.ndarray:
        """A (T, H, W, 3) uint8 array over the buffer; the next call overwrites its content."""
        size = t * height * width * 3
        if self._memory.size < size:
            self._memory = np.empty(size, np.uint8)
        return self._memory[:size].reshape(t, height, width, 3)


Pick = Callable[[int], np.ndarray]  # frames in the clip -> (T,) ascending indices of the frames to decode


def decode_clip(path: Path, t: int, buffer: FrameBuffer | None = None, pick: Pick | None = None) -> DecodedClip:
    """Decode the T sampled frames and the audio of `path`; raise DecodeError with a reason.

    With a `buffer`, the decoded frames live in it (decord only) and stay valid until its next use.
    `pick` chooses other frames than T uniformly spaced ones (e.g. those a dataset's face frames show).
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    pick = pick or (lambda n: sample_indices(n, t))
    try:
        return _decode_decord(path, pick, buffer)
    except Exception as decord_err:  # decord raises bare RuntimeErrors/DECORDErrors for bad input
        log.debug("decord cannot decode %s (%s); trying PyAV", path, decord_err)
        try:
            return _decode_pyav(path, pick)
        except Exception as av_err:
            raise DecodeError(f"cannot decode video (decord: {_short(decord_err)}; "
                              f"PyAV: {_short(av_err)})") from av_err


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


# -- decord ----------------------------------------------------------------------------------
def _decode_decord(path: Path, pick: Pick, buffer: FrameBuffer | None) -> DecodedClip:
    from decord import VideoReader, cpu

    reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    n_frames, fps = len(reader), float(reader.get_avg_fps())
    index = pick(n_frames)
    frames = _read_frames(reader, index, buffer or FrameBuffer())  # (T, H, W, 3)
    times = reader.get_frame_timestamp(index.tolist())[:, 0].astype(np.float32)  # frame start, s
    height, width = frames.shape[1:3]
    del reader
    samples = decode_audio(path)  # (N,)
    return DecodedClip(frames, index, times, n_frames, fps, width, height, samples, samples.size > 0, "decord")


def _read_frames(reader, index: np.ndarray, buffer: FrameBuffer) -> np.ndarray:
    """The frames at `index` (ascending) as (T, H, W, 3), each decoded once, copied into `buffer`.

    `get_batch(index).asnumpy()` would copy every frame twice, into a new batch buffer and into new
    numpy memory (~100 MB each for 16 frames at 1080p), and the kernel zeroes both every clip.
    Here DLPack exposes each decoded frame in decord's own memory, which goes back to decord for
    the next frames once its one copy into the reused buffer is made.
    """
    from torch.utils.dlpack import from_dlpack

    frames, first = None, {}  # first: frame index -> its slot, for the repeats of a short clip
    for slot, i in enumerate(index.tolist()):
        if i in first:
            frames[slot] = frames[first[i]]
            continue
        reader.seek_accurate(i)  # decodes without converting up to frame i (no-op when already there)
        frame = from_dlpack(reader.next().to_dlpack()).numpy()  # (H, W, 3), decord's memory
        if frames is None:
            frames = buffer.frames(len(index), *frame.shape[:2])
        frames[slot], first[i] = frame, slot
    return frames


# -- PyAV fallback ---------------------------------------------------------------------------
def _decode_pyav(path: Path, pick: Pick) -> DecodedClip:
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
    index = pick(n_frames)
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
    frames = np.stack([kept[int(i)] for i in index])  # (T, H, W, 3)
    times = np.array([kept_time[int(i)] for i in index], dtype=np.float32)
    samples, has_audio = _audio_pyav(path)
    height, width = frames.shape[1:3]
    notes = [f"truncated: {n_frames} of {declared} frames decodable"] if declared > n_frames else []
    return DecodedClip(frames, index, times, n_frames, fps, width, height, samples, has_audio, "pyav", notes)


def _frames_until_error(container, stream):
    """Decoded frames of `stream`, stopping quietly where the data is damaged or cut off."""
    try:
        yield from container.decode(stream)
    except Exception as err:  # PyAV raises InvalidDataError/EOFError subclasses at the damage
        log.debug("decoding stopped early: %s", err)


def decode_audio(path: Path) -> np.ndarray:
    """The audio track alone as (N,) float32 16 kHz mono in [-1, 1]; (0,) without one (decord, else PyAV)."""
    from decord import AudioReader, cpu

    from dfew_mm.extract.native_logs import native_stderr_silenced

    try:
        with native_stderr_silenced():  # decord logs a missing audio stream itself
            reader = AudioReader(str(path), ctx=cpu(0), sample_rate=SAMPLE_RATE, mono=True)
            return reader[:].asnumpy().reshape(-1).astype(np.float32)
    except Exception as err:  # no audio stream, or a container decord cannot open
        log.debug("%s: no decodable audio via decord (%s)", path, err)
        return _audio_pyav(Path(path))[0]


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
