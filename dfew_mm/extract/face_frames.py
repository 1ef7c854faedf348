"""Faces from the face frames a dataset distributes (`--face-source`, e.g. DFEW's clip_224x224_16f), not detected.

Per clip, the images of its frame folder in numeric order (1.jpg, 2.jpg, ..., 10.jpg); T of them,
spaced as `detect` spaces the frames of a video, are resized to --face-size. No detector runs:
`face_mask` is true where the sampled frame reads and is not blank. Pose, audio and the waveform
still come from the clip's original video when there is one, decoded at the frames the faces show:

    face frame k of the folder's N shows original frame sample_indices(n, N)[k] of the original's n,

the same frame when a full-rate folder holds every frame (N == n), and N frames spread evenly over the
clip's duration otherwise: a sparse folder such as DFEW's 16 frames, or a full-rate folder whose count
differs from the original's (said in the clip's note). Faces, pose and audio thus share the original's
time line; for DFEW's 16 frames at T = 16, or full-rate frames, the original frames decoded are those
`detect` decodes. Without an original the clip holds faces only: pose and audio arrays are empty, the
record's `has_original` is false and its note names the absent modalities; frame times then follow the
dataset's nominal frame rate.

`--darken` darkens the face frames themselves (already crops) and, for pose, the original's frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dfew_mm.constants import N_POSE_LANDMARKS, POSE_CHANNELS, WAVEFORM_ARRAY
from dfew_mm.datasets.frame_folders import FrameFolders, frame_files
from dfew_mm.extract.audio import log_mel_fbank, waveform_int16
from dfew_mm.extract.decode import DecodeError, decode_clip, sample_indices
from dfew_mm.extract.images import downscale, to_mp_images
from dfew_mm.extract.native_logs import native_stderr_silenced
from dfew_mm.extract.quality import frame_luma, masked_mean_luma, rms_db
from dfew_mm.lowlight import clip_rng, darken_frames

BLANK_STD = 2.0  # grey levels: a frame whose every channel varies less than this shows no face (e.g. all black)


@dataclass(frozen=True)
class ClipFiles:
    """One clip's inputs under a face frame source (picklable: it travels to the extraction workers)."""

    video: Path | None  # the original video; None when the copy has none for this clip
    frames: Path | None  # its face frame folder; None when absent
    source: FrameFolders
    absent: str = ""  # where both were looked for, for the failed record of a clip with neither

    def __str__(self) -> str:
        return str(self.frames or self.video or self.absent)


class FrameFolderError(DecodeError):
    """A clip's face frames cannot be used; the message says why (it becomes the manifest `error`)."""


@dataclass
class FaceFrames:
    images: np.ndarray  # (T, H, W, 3) uint8 RGB as stored in the folder; zeros where unreadable
    mask: np.ndarray  # (T,) bool, the frame reads and is not blank
    position: np.ndarray  # (T,) int32, index of each frame in the folder's numeric order
    count: int  # N, frames in the folder
    notes: list[str]


def read_face_frames(folder: Path, t: int) -> FaceFrames:
    """T frames of `folder` sampled uniformly; FrameFolderError for an empty folder, frames of two sizes
    or no readable frame. Only the sampled frames are read."""
    files, others = frame_files(folder)
    if not files:
        found = f" (it holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''})" if others else ""
        raise FrameFolderError(f"no face frames in {folder}{found}: expected images named 1.jpg, 2.jpg, ...")
    position = sample_indices(len(files), t)  # (T,)
    read: dict[int, np.ndarray | None] = {}
    with native_stderr_silenced():  # libjpeg complains about damaged files on stderr; the note names them
        for k in np.unique(position).tolist():
            image = cv2.imread(str(files[k]), cv2.IMREAD_COLOR)  # (H, W, 3) BGR, None when unreadable
            read[k] = None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    unreadable = [files[k].name for k, image in read.items() if image is None]
    if len(unreadable) == len(read):
        raise FrameFolderError(f"none of the {len(read)} sampled face frames in {folder} reads as an image "
                               f"(e.g. {unreadable[0]})")
    sizes: dict[tuple[int, int], str] = {}
    for k, image in read.items():
        if image is not None:
            sizes.setdefault(image.shape[:2], files[k].name)
    if len(sizes) > 1:
        shown = ", ".join(f"{name} {w}x{h}" for (h, w), name in sizes.items())
        raise FrameFolderError(f"face frames of different sizes in {folder} ({shown}): the frames of a clip must "
                               "share one size; re-export the folder")
    height, width = next(iter(sizes))
    images = np.zeros((t, height, width, 3), np.uint8)
    mask = np.zeros(t, bool)
    blank: set[int] = set()
    for j, k in enumerate(position.tolist()):
        image = read[k]
        if image is None:
            continue
        images[j] = image
        if cv2.meanStdDev(image)[1].max() < BLANK_STD:
            blank.add(k)
        else:
            mask[j] = True
    notes = []
    if len(files) < t:
        notes.append(f"short clip: {len(files)} face frames < {t}, frames repeated")
    if unreadable:
        notes.append(f"{len(unreadable)} of {len(read)} sampled face frames unreadable ({', '.join(unreadable[:5])})")
    if blank:
        notes.append(f"{len(blank)} of {len(read)} sampled face frames blank")
    if others:
        notes.append(f"{len(others)} entries of the frame folder are not numbered images (e.g. {others[0]})")
    return FaceFrames(images, mask, position.astype(np.int32), len(files), notes)


def resize_faces(images: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) -> (T, S, S, 3) uint8, resampled as detected crops are (area when shrinking)."""
    out = np.empty((len(images), size, size, 3), np.uint8)
    interp = cv2.INTER_AREA if max(images.shape[1:3]) > size else cv2.INTER_LINEAR
    for i, image in enumerate(images):
        cv2.resize(image, (size, size), dst=out[i], interpolation=interp)
    return out


def extract_from_frames(extractor, files: ClipFiles, clip_id: str, watch) -> tuple[dict[str, np.ndarray],
                                                                                    dict[str, Any], list[str]]:
    """(arrays, record stats, notes) of one clip, as `ClipExtractor` returns them, with faces from
    `files.frames`; `extractor` lends its options, pose and blendshape models and frame buffer."""
    opts, source = extractor.options, files.source
    if files.frames is None and files.video is not None:  # never mix detected faces into a store of face frames
        raise FrameFolderError(f"no {source.name} face frame folder for this clip (its original {files.video.name} "
                               "exists: extract it with --face-source detect, into another store)")
    if files.frames is None:
        raise FrameFolderError(files.absent or f"no original clip and no {source.name} face frame folder")
    faces_in = read_face_frames(files.frames, opts.frames)
    watch.lap("face")
    notes = list(faces_in.notes)
    clip = None
    if files.video is not None:
        shown = lambda n: sample_indices(n, faces_in.count)[faces_in.position]  # noqa: E731  original frames (T,)
        try:
            with native_stderr_silenced():
                clip = decode_clip(files.video, opts.frames, extractor.frame_buffer, pick=shown)
        except DecodeError as err:
            raise DecodeError(f"original clip {files.video.name}: {err}") from None
        watch.lap("decode")
        notes += clip.notes
        if source.full_rate and clip.n_frames != faces_in.count:
            notes.append(f"{faces_in.count} face frames for the {clip.n_frames} frames of the original: spread "
                         "over its duration")
        if clip.backend != "decord":
            notes.append(f"decoded with {clip.backend}")
        frame_time = clip.frame_time
    else:
        frame_time = (faces_in.position / source.fps).astype(np.float32)
        notes.append(f"no original clip: faces only, no pose or audio; frame times at {source.dataset}'s nominal "
                     f"{source.fps:g} fps")
    if opts.darken > 0:  # the face frames are crops already: darkening them is crop level on real crops
        rng = clip_rng(clip_id, opts.darken_seed)
        if clip is not None:
            clip.frames = darken_frames(clip.frames, opts.darken, rng)
        faces_in.images = darken_frames(faces_in.images, opts.darken, rng)
        watch.lap("darken")
    faces = resize_faces(faces_in.images, opts.face_size)  # (T, S, S, 3)
    watch.lap("crop")

    t = opts.frames
    if clip is not None:
        small = to_mp_images(downscale(clip.frames, opts.detect_max_side))  # T images of (h, w, 3)
        watch.lap("resize")
        with native_stderr_silenced():
            pose, pose_mask = extractor.pose.estimate(small, clip.frame_time)
        watch.lap("pose")
        samples, luma = clip.audio, frame_luma(clip.frames)  # (N,), (T,)
    else:  # ORIGINAL_ARRAYS of dfew_mm.data.store, empty
        pose, pose_mask = np.zeros((t, N_POSE_LANDMARKS, POSE_CHANNELS), np.float32), np.zeros(t, bool)
        samples, luma = np.zeros(0, np.float32), frame_luma(faces_in.images)  # the face frames are all the picture
    audio = log_mel_fbank(samples)  # (F, 128) float16
    watch.lap("audio")
    arrays = {
        "faces": faces, "face_mask": faces_in.mask, "face_boxes": np.full((t, 4), np.nan, np.float32),
        "pose": pose, "pose_mask": pose_mask, "audio": audio,
        "frame_index": faces_in.position, "frame_time": np.asarray(frame_time, np.float32),
        "luma": luma, WAVEFORM_ARRAY: waveform_int16(samples),
    }
    if extractor.blendshapes is not None:  # from the faces stored, as with detected crops
        watch.lap("quality")
        arrays["blendshapes"] = extractor.blendshapes.estimate(faces, faces_in.mask)  # (T, 52)
        watch.lap("blendshapes")

    if not faces_in.mask.any():
        notes.append("no usable face frame")
    if clip is not None and not clip.has_audio:
        notes.append("no audio track")
    elif clip is not None and audio.shape[0] == 0:
        notes.append("audio shorter than one 25 ms window")
    height, width = faces_in.images.shape[1:3]
    stats = {
        "n_frames": clip.n_frames if clip else faces_in.count,
        "fps": round(clip.fps, 3) if clip else source.fps,
        "duration_s": round(clip.duration_s if clip else faces_in.count / source.fps, 3),
        "width": clip.width if clip else width, "height": clip.height if clip else height,
        "face_rate": round(float(faces_in.mask.mean()), 4), "pose_rate": round(float(pose_mask.mean()), 4),
        "has_audio": bool(clip is not None and clip.has_audio and audio.shape[0] > 0),
        "audio_rms_db": _round(rms_db(samples)),
        "luma_mean": _round(float(luma.mean())),
        "face_luma_mean": _round(masked_mean_luma(faces, faces_in.mask)),
        "has_original": clip is not None,
    }
    watch.lap("quality")
    return arrays, stats, notes


def _round(value: float, digits: int = 3) -> float:
    return round(value, digits) if np.isfinite(value) else float("nan")
