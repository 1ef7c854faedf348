"""Does a feature store hold what the configured backbones read? Checked before training starts.

A vision backbone may upsample the stored faces by at most MAX_FACE_UPSCALE: beyond that it sees
interpolation blur where its weights expect detail, and the store should be re-extracted at a
larger `--face-size`. A waveform speech encoder needs the store's `waveform` array.
"""

from __future__ import annotations

from typing import Collection

from dfew_mm.config import ModelConfig
from dfew_mm.constants import WAVEFORM_ARRAY
from dfew_mm.errors import StoreError
from dfew_mm.models.backbones import speech_spec, vision_spec
from dfew_mm.models.encoders.video import face_geometry

MAX_FACE_UPSCALE = 1.5  # resize side / stored face side; 112 px faces serve backbones resizing to <= 168 px
REEXTRACT = "python preprocess/extract.py --dfew-root ROOT --out NEW_FEATURES"
ADD_WAVEFORM = "python preprocess/extract.py --add-waveform --dfew-root ROOT --out STORE"


def store_fit_problems(model_cfg: ModelConfig, face_size: int, arrays: Collection[str]) -> list[str]:
    """What the store (faces of `face_size` px, per-clip `arrays`) lacks for `model_cfg`, with what to re-extract."""
    problems = []
    if "video" in model_cfg.modalities:
        spec = vision_spec(model_cfg.video)
        resize, crop = face_geometry(spec, model_cfg.video, face_size)
        if resize / face_size > MAX_FACE_UPSCALE:
            problems.append(
                f"model.video.arch={model_cfg.video.arch} resizes faces to {resize} px (input {crop} px, "
                f"{spec.source}), {resize / face_size:.1f}x the store's {face_size} px faces (at most "
                f"{MAX_FACE_UPSCALE}x). Re-extract with larger faces: `{REEXTRACT} --face-size {resize}` and train "
                f"with data.face_size={resize}; or run the backbone on smaller faces with "
                f"model.video.input_size={round(face_size * crop / resize)}")
    if "blendshapes" in model_cfg.modalities and "blendshapes" not in arrays:
        problems.append("the blendshapes modality reads the store's 'blendshapes' array, which this store lacks. "
                        f"Re-extract with `{REEXTRACT} --blendshapes`")
    if "audio" in model_cfg.modalities:
        spec = speech_spec(model_cfg.audio)
        if spec.input == "waveform" and WAVEFORM_ARRAY not in arrays:
            problems.append(
                f"model.audio.arch={model_cfg.audio.arch} reads the 16 kHz waveform, and the store has no "
                f"'{WAVEFORM_ARRAY}' array (a store of format 1). Add it without redoing faces and pose: "
                f"`{ADD_WAVEFORM}`; or use model.audio.arch=ast, which reads the stored filterbank")
    return problems


def check_store_fits(model_cfg: ModelConfig, face_size: int, arrays: Collection[str]) -> None:
    """Raise StoreError listing every mismatch between the configured backbones and the store."""
    problems = store_fit_problems(model_cfg, face_size, arrays)
    if problems:
        raise StoreError("the feature store does not fit the model:\n  - " + "\n  - ".join(problems))


def reads_waveform(model_cfg: ModelConfig) -> bool:
    """Whether the model reads the stored 16 kHz waveform (a waveform speech encoder on the audio)."""
    return "audio" in model_cfg.modalities and speech_spec(model_cfg.audio).input == "waveform"
