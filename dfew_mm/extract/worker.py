"""One clip in, its arrays and manifest record out. Bad input never raises: it gives a failed record.

Degraded but usable clips (no audio track, no face anywhere, fewer frames than T) are `ok` with
a note in the record's `error` column, so they can be filtered or analysed later.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from dfew_mm.extract.assets import resolve_model
from dfew_mm.constants import WAVEFORM_ARRAY
from dfew_mm.extract.audio import log_mel_fbank, waveform_int16
from dfew_mm.extract.decode import DecodeError, FrameBuffer, decode_clip
from dfew_mm.extract.face import FaceDetector, crop_faces, track_faces
from dfew_mm.extract.face_frames import ClipFiles, extract_from_frames
from dfew_mm.extract.images import downscale, to_mp_image, to_mp_images
from dfew_mm.extract.native_logs import native_stderr_silenced, quiet_decoder_logs
from dfew_mm.extract.options import ExtractOptions
from dfew_mm.extract.pose import PoseEstimator
from dfew_mm.extract.quality import frame_luma, masked_mean_luma, rms_db
from dfew_mm.lowlight import clip_rng, darken_frames

log = logging.getLogger(__name__)

def resolve_models(options: ExtractOptions, assets_dir: str | Path | None) -> dict[str, Path]:
    """Model key -> verified local file, downloading into the cache where needed (parent process)."""
    return {key: resolve_model(key, assets_dir) for key in options.model_keys()}


STAGES = ("decode", "darken", "resize", "face", "crop", "pose", "audio", "quality", "blendshapes")  # in run order


class Stopwatch:
    """Seconds per stage of one clip: one perf_counter read per stage boundary (well under 1 µs)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        """Charge the time since the previous lap (or the start) to `stage`."""
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


class ClipExtractor:
    """Holds one set of MediaPipe instances; create one per worker process.

    `stage_s` holds the seconds per stage (STAGES) of the last extracted clip, for profiling;
    writing the clip is the caller's and is not included.
    """

    def __init__(self, options: ExtractOptions, model_paths: dict[str, Path]):
        self.options = options
        self.stage_s: dict[str, float] = {}
        self.frame_buffer = FrameBuffer()  # decoded frames of the clip in progress
        quiet_decoder_logs()
        with native_stderr_silenced():  # MediaPipe start-up chatter, including the first inference
            self.faces = [FaceDetector(model_paths[key], options.face_confidence)
                          for key in options.face_detector_keys()]
            self.pose = PoseEstimator(model_paths[f"pose_landmarker_{options.pose_model}"], options.pose_confidence)
            self.blendshapes = None
            if options.blendshapes:
                from dfew_mm.extract.blendshapes import BlendshapeEstimator

                self.blendshapes = BlendshapeEstimator(model_paths["face_landmarker"])
            self._warm_up()

    def _warm_up(self) -> None:
        blank = to_mp_image(np.zeros((64, 64, 3), np.uint8))
        for detector in self.faces:
            detector.detect(blank)
        self.pose.estimate([blank], np.zeros(1, np.float32))

    def extract(self, clip_id: str, path: Path | ClipFiles) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
        """(manifest record, arrays) of a video file, or of a dataset's face frames (`ClipFiles`); arrays is
        None for a failed clip. Never raises for bad input."""
        start = time.perf_counter()
        record: dict[str, Any] = {"clip_id": clip_id, "status": "failed", "error": ""}
        try:
            arrays, stats, notes = self._extract(path, clip_id)
        except DecodeError as err:
            record["error"] = str(err)
            arrays = None
        except Exception as err:  # a clip must never stop the run; keep the reason in the manifest
            log.warning("clip %s (%s) failed: %s", clip_id, path, err, exc_info=log.isEnabledFor(logging.DEBUG))
            record["error"] = f"{type(err).__name__}: {err}"
            arrays = None
        else:
            record.update(stats, status="ok", error="; ".join(notes))
        record["extract_s"] = round(time.perf_counter() - start, 3)
        return record, arrays

    def _extract(self, path: Path | ClipFiles, clip_id: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any],
                                                                          list[str]]:
        opts = self.options
        watch = Stopwatch()
        self.stage_s = watch.seconds
        if isinstance(path, ClipFiles):  # faces from a dataset's face frames, pose and audio from its original
            return extract_from_frames(self, path, clip_id, watch)
        with native_stderr_silenced():  # decord logs damaged files itself; the record keeps the reason
            clip = decode_clip(path, opts.frames, self.frame_buffer)
        watch.lap("decode")
        if opts.darken > 0:  # scene-level low light: everything below sees the darkened frames
            clip.frames = darken_frames(clip.frames, opts.darken, clip_rng(clip_id, opts.darken_seed))
            watch.lap("darken")
        small = to_mp_images(downscale(clip.frames, opts.detect_max_side))  # T images of (h, w, 3)
        watch.lap("resize")
        track = track_faces(self.faces, small)
        watch.lap("face")
        margin = opts.face_margin if track.mask.any() else 0.0  # the centre fallback crop stays in frame
        faces = crop_faces(clip.frames, track.boxes, opts.face_size, margin)  # (T, S, S, 3)
        watch.lap("crop")
        with native_stderr_silenced():  # a harmless projection warning on the first non-square frame
            pose, pose_mask = self.pose.estimate(small, clip.frame_time)
        watch.lap("pose")
        audio = log_mel_fbank(clip.audio)  # (F, 128) float16
        watch.lap("audio")
        luma = frame_luma(clip.frames)  # (T,), full resolution (cv2.mean is cheap)

        arrays = {
            "faces": faces, "face_mask": track.mask, "face_boxes": track.boxes.astype(np.float32),
            "pose": pose, "pose_mask": pose_mask, "audio": audio,
            "frame_index": clip.frame_index.astype(np.int32), "frame_time": clip.frame_time.astype(np.float32),
            "luma": luma, WAVEFORM_ARRAY: waveform_int16(clip.audio),
        }
        if self.blendshapes is not None:
            watch.lap("quality")
            arrays["blendshapes"] = self.blendshapes.estimate(faces, track.mask)  # (T, 52)
            watch.lap("blendshapes")

        notes = list(clip.notes)
        if clip.n_frames < opts.frames:
            notes.append(f"short clip: {clip.n_frames} frames < {opts.frames}, frames repeated")
        if not track.mask.any():
            notes.append("no face detected: centre crop")
        if not clip.has_audio:
            notes.append("no audio track")
        elif audio.shape[0] == 0:
            notes.append("audio shorter than one 25 ms window")
        if clip.backend != "decord":
            notes.append(f"decoded with {clip.backend}")
        stats = {
            "n_frames": clip.n_frames, "fps": round(clip.fps, 3), "duration_s": round(clip.duration_s, 3),
            "width": clip.width, "height": clip.height,
            "face_rate": round(float(track.mask.mean()), 4), "pose_rate": round(float(pose_mask.mean()), 4),
            "has_audio": bool(clip.has_audio and audio.shape[0] > 0),
            "audio_rms_db": _round(rms_db(clip.audio)),
            "luma_mean": _round(float(luma.mean())),
            "face_luma_mean": _round(masked_mean_luma(faces, track.mask)), "has_original": True,
        }
        watch.lap("quality")
        return arrays, stats, notes

    def close(self) -> None:
        with native_stderr_silenced():
            for detector in self.faces:
                detector.close()
            self.pose.close()
            if self.blendshapes is not None:
                self.blendshapes.close()


def _round(value: float, digits: int = 3) -> float:
    return round(value, digits) if np.isfinite(value) else float("nan")

