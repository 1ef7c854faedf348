"""Main-face tracking and square face crops.

MediaPipe FaceDetector runs on every sampled frame; the main face is the one seen in the most
frames, followed through the clip by overlap so that the crop does not jump to another person. Frames
without a detection get a box interpolated from their neighbours, and boxes are lightly smoothed
over time. When no face is found anywhere, a centred square crop stands in (face_mask all false).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


LINK_DISTANCE = 1.0  # a detection continues the main-face track if its centre moved < this x face size
LINK_SCALE = 2.0  # ... and its size changed by less than this factor
REACQUIRE_AREA = 0.5  # after a cut, a new face becomes the main face if at least this large (x anchor)
REACQUIRE_SCORE = 0.6  # ... and at least this confident
SMOOTHING = np.array([0.25, 0.5, 0.25])  # temporal kernel on box centre and size


@dataclass
class FaceTrack:
    boxes: np.ndarray  # (T, 4) float32 normalised x1, y1, x2, y2 (smoothed, interpolated)
    mask: np.ndarray  # (T,) bool, a face was detected in that frame


class FaceDetector:
    """One MediaPipe FaceDetector (IMAGE mode); detections as normalised boxes with scores."""

    def __init__(self, model_path: Path, min_confidence: float = 0.4):
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.IMAGE, min_detection_confidence=min_confidence)
        self._detector = vision.FaceDetector.create_from_options(options)

    def detect(self, image) -> np.ndarray:
        """(K, 5) float32 rows x1, y1, x2, y2 (normalised), score for one RGB mediapipe.Image."""
        height, width = image.height, image.width
        result = self._detector.detect(image)
        rows = []
        for det in result.detections:
            box = det.bounding_box
            score = det.categories[0].score if det.categories else 1.0
            rows.append((box.origin_x / width, box.origin_y / height, (box.origin_x + box.width) / width,
                         (box.origin_y + box.height) / height, score))
        return np.asarray(rows, np.float32).reshape(-1, 5)

    def close(self) -> None:
        self._detector.close()


def _area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))


def _linked(a: np.ndarray, b: np.ndarray) -> bool:
    """Plausibly the same face in two sampled frames: moved less than LINK_DISTANCE face sizes
    and changed size by less than LINK_SCALE (frames are ~0.1-0.3 s apart, heads move fast)."""
    size_a, size_b = np.sqrt(_area(a)), np.sqrt(_area(b))
    if size_a <= 0 or size_b <= 0 or max(size_a, size_b) > LINK_SCALE * min(size_a, size_b):
        return False
    shift = np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)
    return bool(shift < LINK_DISTANCE * (size_a + size_b) / 2)


def select_main_face(detections: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick one box per frame from per-frame (K, 5) detections: (T, 4) boxes, (T,) mask, (T,) scores.

    The anchor is the detection seen in the most frames (linked detections elsewhere), ties
    broken by size x score, so a large one-frame false positive cannot win. From the anchor, walk
    forwards and backwards choosing the most confident detection linked to the last chosen box;
    an unlinked face is taken only if it is large and confident (a shot change), otherwise the
    frame counts as having no main face.
    """
    t = len(detections)
    boxes, mask, scores = np.zeros((t, 4), np.float32), np.zeros(t, bool), np.zeros(t, np.float32)
    candidates = [(i, k) for i in range(t) for k in range(len(detections[i]))]
    if not candidates:
        return boxes, mask, scores

    def support(i: int, k: int) -> tuple[int, float]:
        box = detections[i][k, :4]
        seen = sum(any(_linked(box, d[:4]) for d in detections[j]) for j in range(t) if j != i)
        return seen, _area(box) * float(detections[i][k, 4])

    anchor_t, anchor_k = max(candidates, key=lambda c: support(*c))
    boxes[anchor_t], mask[anchor_t] = detections[anchor_t][anchor_k, :4], True
    scores[anchor_t] = detections[anchor_t][anchor_k, 4]
    anchor_area = _area(boxes[anchor_t])
    for order in (range(anchor_t + 1, t), range(anchor_t - 1, -1, -1)):
        last = boxes[anchor_t]
        for i in order:
            dets = detections[i]
            linked = [k for k in range(len(dets)) if _linked(last, dets[k, :4])]
            if linked:
                k = max(linked, key=lambda k: dets[k, 4])
            elif len(dets):
                k = int(np.argmax([_area(d[:4]) * d[4] for d in dets]))
                if _area(dets[k, :4]) < REACQUIRE_AREA * anchor_area or dets[k, 4] < REACQUIRE_SCORE:
                    continue
            else:
                continue
            boxes[i], mask[i], scores[i] = dets[k, :4], True, dets[k, 4]
            last = boxes[i]
    return boxes, mask, scores


def fill_and_smooth(boxes: np.ndarray, mask: np.ndarray, aspect: float) -> np.ndarray:
    """Interpolate boxes over frames without a detection and smooth centre and size over time.

    `aspect` is frame width / height; with no detection at all, a centred square box is returned.
    """
    t = len(boxes)
    if not mask.any():
        side_w = min(1.0, 1.0 / aspect)  # square in pixels: full height, or full width if portrait
        side_h = min(1.0, aspect)
        return np.tile(np.array([(1 - side_w) / 2, (1 - side_h) / 2, (1 + side_w) / 2, (1 + side_h) / 2],
                                np.float32), (t, 1))
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # (T, 2)
    size = boxes[:, 2:] - boxes[:, :2]  # (T, 2)
    params = np.concatenate([centre, size], axis=1)  # (T, 4) cx, cy, w, h
    known = np.flatnonzero(mask)
    filled = np.stack([np.interp(np.arange(t), known, params[known, j]) for j in range(4)], axis=1)
    if t >= 3:
        padded = np.concatenate([filled[:1], filled, filled[-1:]])  # (T + 2, 4), edge-replicated
        filled = sum(w * padded[i:i + t] for i, w in enumerate(SMOOTHING))
    half = filled[:, 2:] / 2
    return np.concatenate([filled[:, :2] - half, filled[:, :2] + half], axis=1).astype(np.float32)


def crop_faces(frames: np.ndarray, boxes: np.ndarray, size: int, margin: float) -> np.ndarray:
    """Square crops (T, S, S, 3) from (T, H, W, 3) frames around each box (T, 4).

    The side is the longer box side x (1 + margin); parts outside the frame are black.
    """
    t, height, width = frames.shape[:3]
    out = np.zeros((t, size, size, 3), np.uint8)
    for i in range(t):
        x1, y1, x2, y2 = boxes[i] * np.array([width, height, width, height])
        side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + margin)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
        side_px = max(int(round(side)), 1)
        sx1, sy1 = max(left, 0), max(top, 0)
        sx2, sy2 = min(left + side_px, width), min(top + side_px, height)
        if (sx1, sy1, sx2, sy2) == (left, top, left + side_px, top + side_px):
            square = frames[i, top:top + side_px, left:left + side_px]  # inside the frame: a view, no copy
        else:  # clip the square to the frame and paste it into a zero canvas: off-frame parts are black
            square = np.zeros((side_px, side_px, 3), np.uint8)
            if sx2 > sx1 and sy2 > sy1:
                square[sy1 - top:sy2 - top, sx1 - left:sx2 - left] = frames[i, sy1:sy2, sx1:sx2]
        interp = cv2.INTER_AREA if side_px > size else cv2.INTER_LINEAR
        cv2.resize(square, (size, size), dst=out[i], interpolation=interp)
    return out


def track_faces(detectors: list[FaceDetector], images: list) -> FaceTrack:
    """Detect, select the main face and fill/smooth its boxes in T frames (mediapipe.Images).

    With several detectors (short- then full-range BlazeFace) one model's track is kept per clip,
    so box sizes stay consistent (the two models draw boxes of different sizes). The first
    model's track is kept when it covers every frame: a close-up, which the short-range model is
    made for. Otherwise the next model runs too and the track covering more frames wins (then
    the higher summed score): medium and wide shots with small faces suit the full-range model.
    """
    best = None  # (boxes, mask, scores) of the best track so far
    for detector in detectors:
        need = 0 if best is None else int(best[1].sum())  # frames a track must cover to win or tie
        detections = detect_until_hopeless(detector, images, need)
        if detections is not None:
            boxes, mask, scores = select_main_face(detections)
            if best is None or (mask.sum(), scores.sum()) > (best[1].sum(), best[2].sum()):
                best = (boxes, mask, scores)
        if best[1].all():
            break  # no other model can cover more frames
    boxes, mask, _ = best
    aspect = images[0].width / images[0].height
    return FaceTrack(fill_and_smooth(boxes, mask, aspect), mask)


def detect_until_hopeless(detector: FaceDetector, images: list, need: int) -> list[np.ndarray] | None:
    """Per-frame (K, 5) detections, or None as soon as fewer than `need` frames can have a face.

    A main-face track covers at most the frames with a detection, so once the frames with one so
    far plus the frames left fall below `need`, this model's track cannot win and the rest is skipped.
    """
    detections, found = [], 0
    for i, image in enumerate(images):
        detections.append(detector.detect(image))
        found += len(detections[-1]) > 0
        if found + len(images) - 1 - i < need:
            return None
    return detections
