"""Emotion prediction on new videos: in-memory extraction (no feature store) and a trained model.

Each file goes through the same clip worker as `preprocess/extract.py` (decode, face, pose, audio),
then through the dataset's resampling and the model. A file that cannot be read gets an error
entry naming the reason; the other files still get predictions.
"""

from __future__ import annotations

import json
import logging
from contextlib import closing
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from dfew_mm.data.dataset import ClipDataset
from dfew_mm.predictions import modality_label

log = logging.getLogger(__name__)


class InMemoryClips(ClipDataset):
    """ClipDataset over arrays held in memory instead of a feature store (same resampling and masks)."""

    def __init__(self, arrays: dict[str, dict[str, np.ndarray]], data_cfg, modalities: Sequence[str],
                 model_cfg=None):
        ids = list(arrays)
        super().__init__(None, ids, np.zeros(len(ids), dtype=np.int64), data_cfg, modalities, train=False,
                         model_cfg=model_cfg)
        self._clips = arrays

    def load_arrays(self, clip_id: str) -> dict[str, np.ndarray]:
        return self._clips[clip_id]


def extraction_options(cfg):
    """Extraction settings of the store the model was trained on, so new clips look the same to it.

    Falls back to the defaults with the model's frame count and face size when that store is not
    available (e.g. a checkpoint copied to another machine).
    """
    from dataclasses import fields

    from dfew_mm.constants import FACE_SOURCE_DETECT
    from dfew_mm.data.store import SETTINGS_FILE
    from dfew_mm.extract.options import ExtractOptions
    from dfew_mm.models.encoders import ENCODERS

    settings = Path(cfg.data.store) / SETTINGS_FILE if cfg.data.store else None
    if settings is not None and settings.is_file():
        saved = json.loads(settings.read_text())
        names = {f.name for f in fields(ExtractOptions)}
        if saved.get("darken"):  # a simulation for experiments: real clips are predicted as they are
            log.info("the training store was darkened at extraction (--darken %g); new clips are not", saved["darken"])
        if saved.get("face_source", FACE_SOURCE_DETECT) != FACE_SOURCE_DETECT:  # new clips come without them
            log.warning("the model was trained on a dataset's face frames (%s); the faces of new clips are detected "
                        "and cropped by dfew_mm, which frames them differently", saved["face_source"])
        return ExtractOptions(**{k: v for k, v in saved.items() if k in names and k not in ("darken", "face_source")})
    log.info("training store settings not found (%s); extracting with defaults, %d frames, %d px faces",
             settings, cfg.data.frames, cfg.data.face_size)
    switches = {ENCODERS[m].extract_option: True for m in cfg.model.modalities if ENCODERS[m].extract_option}
    return ExtractOptions(frames=cfg.data.frames, face_size=cfg.data.face_size, **switches)


def predict_clips(paths: Sequence[str | Path], checkpoint: str | Path, assets_dir: str | Path | None = None,
                  modalities: str | Sequence[str] | None = None, top_k: int = 3, device: str = "auto") -> list[dict]:
    """One result dict per input path, in order.

    Success: {"clip", "ok": True, "top": [{"emotion", "prob"}, ...], "probs": {class: p}, with the class
    names of the dataset the checkpoint was trained on,
    "modalities", "quality": {face_rate, pose_rate, has_audio, face_luma_mean, luma_mean, note}}.
    Failure: {"clip", "ok": False, "error": reason}.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from dfew_mm.batch import collate
    from dfew_mm.checkpoint import load_checkpoint
    from dfew_mm.data.store import EXTRACTOR_VERSION
    from dfew_mm.device import resolve_device
    from dfew_mm.evaluate import parse_modalities, trained_extractor_version
    from dfew_mm.inference import predict_logits

    dev = resolve_device(device)
    model, cfg, meta = load_checkpoint(checkpoint, map_location=dev)
    mods = parse_modalities(modalities, cfg.model.modalities)
    options = extraction_options(cfg)
    trained = trained_extractor_version(meta, cfg.data.store)
    if trained is not None and trained != EXTRACTOR_VERSION:
        log.warning("the model was trained on features of extractor version %d; new clips are extracted by version "
                    "%d, which makes other features of the same clip (docs/reproducibility.md)", trained,
                    EXTRACTOR_VERSION)
    results = []
    with closing(extract_in_memory(paths, options, assets_dir)) as extracted:
        for path, record, arrays in tqdm(extracted, total=len(paths), desc="predict", unit="clip",
                                         disable=None if len(paths) > 1 else True):
            if record is None:
                results.append({"clip": str(path), "ok": False,
                                "error": f"{path} does not exist or is not a file"})
                continue
            if arrays is None:
                results.append({"clip": str(path), "ok": False,
                                "error": f"cannot read {path}: {record['error']}"})
                continue
            clips = InMemoryClips({path.stem: arrays}, cfg.data, mods, model_cfg=cfg.model)
            loader = DataLoader(clips, batch_size=1, collate_fn=collate)
            probs = predict_logits(model, loader, dev, cfg.train.amp, mods).probs[0]  # (C,)
            order = np.argsort(-probs)[:top_k]
            results.append({
                "clip": str(path), "ok": True, "modalities": modality_label(mods),
                "top": [{"emotion": model.classes[i], "prob": round(float(probs[i]), 4)} for i in order],
                "probs": {c: round(float(p), 4) for c, p in zip(model.classes, probs)},
                "quality": {k: record.get(k) for k in ("face_rate", "pose_rate", "has_audio", "luma_mean",
                                                       "face_luma_mean")} | {"note": record.get("error", "")},
            })
    return results


def extract_in_memory(paths: Sequence[str | Path], options, assets_dir: str | Path | None = None
                      ) -> Iterator[tuple[Path, dict | None, dict[str, np.ndarray] | None]]:
    """(path, manifest record, arrays) per file, in order, from the clip worker of `preprocess/extract.py`
    without a store; arrays is None for a clip that failed, and both are None for a file that is not there."""
    from dfew_mm.extract.worker import ClipExtractor, resolve_models

    extractor = ClipExtractor(options, resolve_models(options, assets_dir))
    try:
        for raw in paths:
            path = Path(raw)
            yield (path, *extractor.extract(path.stem, path)) if path.is_file() else (path, None, None)
    finally:
        extractor.close()


def format_result(result: dict) -> str:
    """'clip.mp4: happy 0.62  surprise 0.21  neutral 0.07  (face 100%, pose 94%, audio yes)'."""
    if not result["ok"]:
        return f"{result['clip']}: error: {result['error']}"
    top = "  ".join(f"{t['emotion']} {t['prob']:.2f}" for t in result["top"])
    q = result["quality"]
    audio = "yes" if q["has_audio"] else "no"
    return f"{result['clip']}: {top}  (face {q['face_rate']:.0%}, pose {q['pose_rate']:.0%}, audio {audio})"
