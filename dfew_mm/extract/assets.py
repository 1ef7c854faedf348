"""MediaPipe model files: where they come from, where they are cached, how they are checked.

Lookup order for a model file:
  1. `assets_dir` (the `--assets-dir` option) or the `DFEW_MM_ASSETS` environment variable: a local
     folder holding the files under the names in MODEL_FILES; nothing is downloaded.
  2. The cache folder `$XDG_CACHE_HOME/dfew_mm/mediapipe` (default `~/.cache/dfew_mm/mediapipe`),
     filled on first use from the official MediaPipe URLs.

Integrity: files with a published SHA-256 (`sha256` below, cross-checked against independent
public copies) are verified on every download and cache hit. For the others no reference digest
is published, so the digest of the first download is recorded next to the file
(`<name>.sha256`) and every later use is verified against that record (trust on first use).
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dfew_mm.errors import AssetError

log = logging.getLogger(__name__)

ASSETS_ENV = "DFEW_MM_ASSETS"
_BASE_URL = "https://storage.googleapis.com/mediapipe-models"
_DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class ModelFile:
    filename: str  # name in the cache and in a local assets folder
    url: str  # official MediaPipe download (versioned path, so the content does not change)
    sha256: str | None  # published digest, or None: recorded on first download


MODEL_FILES: dict[str, ModelFile] = {
    "face_detector_short_range": ModelFile(
        "face_detector_short_range.tflite",
        f"{_BASE_URL}/face_detector/blaze_face_short_range/float16/1/blaze_face_short_range.tflite",
        "b4578f35940bf5a1a655214a1cce5cab13eba73c1297cd78e1a04c2380b0152f"),
    "face_detector_full_range": ModelFile(
        "face_detector_full_range.tflite",
        f"{_BASE_URL}/face_detector/blaze_face_full_range/float16/1/blaze_face_full_range.tflite",
        None),
    "face_landmarker": ModelFile(
        "face_landmarker.task",
        f"{_BASE_URL}/face_landmarker/face_landmarker/float16/1/face_landmarker.task",
        "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"),
    "pose_landmarker_full": ModelFile(
        "pose_landmarker_full.task",
        f"{_BASE_URL}/pose_landmarker/pose_landmarker_full/float16/1/pose_landmarker_full.task",
        None),
    "pose_landmarker_lite": ModelFile(
        "pose_landmarker_lite.task",
        f"{_BASE_URL}/pose_landmarker/pose_landmarker_lite/float16/1/pose_landmarker_lite.task",
        None),
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dfew_mm" / "mediapipe"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _offline_hint(model: ModelFile) -> str:
    return (f"To work offline, download {model.url} on a machine with internet access, save it as "
            f"'{model.filename}' in a folder and pass --assets-dir FOLDER (or set {ASSETS_ENV}=FOLDER); "
            f"or copy it into the cache folder {cache_dir()}.")


def resolve_model(key: str, assets_dir: str | Path | None = None) -> Path:
    """Path of a verified local copy of model `key` (a MODEL_FILES key), downloading if needed."""
    if key not in MODEL_FILES:
        raise AssetError(f"unknown MediaPipe model '{key}'; known: {', '.join(MODEL_FILES)}")
    model = MODEL_FILES[key]
    local = assets_dir if assets_dir is not None else os.environ.get(ASSETS_ENV)
    if local:
        return _from_local_dir(model, Path(local))
    return _from_cache(model)


def _from_local_dir(model: ModelFile, folder: Path) -> Path:
    path = folder / model.filename
    if not path.is_file():
        raise AssetError(f"{path} not found: the assets folder {folder} (from --assets-dir or "
                         f"{ASSETS_ENV}) must hold {model.filename}, downloadable from {model.url}")
    if model.sha256 and sha256_of(path) != model.sha256:
        # The user chose this folder explicitly, so a different release is allowed, but said.
        log.warning("%s differs from the published %s (SHA-256 mismatch); using it as given",
                    path, model.url)
    return path


def _from_cache(model: ModelFile) -> Path:
    folder = cache_dir()
    path = folder / model.filename
    record = folder / f"{model.filename}.sha256"
    if not path.is_file():
        _download(model, path)
        if model.sha256 is None:
            record.write_text(sha256_of(path) + "\n")
    expected = model.sha256 or (record.read_text().strip() if record.is_file() else None)
    if expected is None:
        record.write_text(sha256_of(path) + "\n")  # a file copied in by hand: trust it from now on
        return path
    actual = sha256_of(path)
    if actual != expected:
        raise AssetError(f"{path} is corrupt or was replaced: SHA-256 {actual[:12]}... expected "
                         f"{expected[:12]}... Delete it (and {record.name} if present) to download it "
                         f"again. {_offline_hint(model)}")
    return path


def _download(model: ModelFile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.download")
    log.info("downloading %s -> %s", model.url, path)
    try:
        with urllib.request.urlopen(model.url, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        tmp.unlink(missing_ok=True)
        raise AssetError(f"could not download MediaPipe model {model.filename} from {model.url} "
                         f"({err}). {_offline_hint(model)}") from err
    if model.sha256 and sha256_of(tmp) != model.sha256:
        tmp.unlink(missing_ok=True)
        raise AssetError(f"downloaded {model.url} but its SHA-256 does not match the published "
                         f"digest {model.sha256[:12]}...; the download is corrupt or was tampered with. "
                         f"{_offline_hint(model)}")
    os.replace(tmp, path)
