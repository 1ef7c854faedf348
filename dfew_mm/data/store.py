"""The feature store written by extraction and read by training and evaluation.

    FEATURES/manifest.csv        one row per clip attempted (MANIFEST_COLUMNS)
    FEATURES/clips/<id>.npz      arrays of one clip (CLIP_ARRAYS), written atomically
    FEATURES/records/<id>.json   the manifest row of one clip; manifest.csv is rebuilt from these,
                                 so parallel workers and shards on many machines never share a file
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from dfew_mm.errors import StoreError

MANIFEST_COLUMNS = (
    "clip_id", "status", "error", "n_frames", "fps", "duration_s", "width", "height",
    "face_rate", "pose_rate", "has_audio", "audio_rms_db", "luma_mean", "face_luma_mean", "extract_s",
)
# name -> (dtype, shape); T sampled frames, S face size, F filterbank frames (10 ms each).
CLIP_ARRAYS = {
    "faces": ("uint8", "(T, S, S, 3) RGB face crops"),
    "face_mask": ("bool", "(T,) a face was detected in that frame"),
    "face_boxes": ("float32", "(T, 4) normalised x1, y1, x2, y2"),
    "pose": ("float32", "(T, 33, 4) x, y, z, visibility"),
    "pose_mask": ("bool", "(T,) a body was detected in that frame"),
    "audio": ("float16", "(F, 128) log-mel filterbank, 16 kHz, 10 ms hop"),
    "frame_index": ("int32", "(T,) index of the sampled frame in the clip"),
    "frame_time": ("float32", "(T,) time of the sampled frame, seconds"),
    "luma": ("float32", "(T,) mean BT.601 luma of the whole frame, 0..255"),
}
OPTIONAL_ARRAYS = {"blendshapes": ("float32", "(T, 52) FaceLandmarker blendshape scores")}


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: no half-written files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; stores are shared on clusters
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FeatureStore:
    """Read access to a feature store: `.manifest` (DataFrame) and `store[clip_id]` (dict of arrays)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise StoreError(f"feature store {self.path} does not exist; create it with "
                             "`python preprocess/extract.py --dfew-root ROOT --out FEATURES`")
        self._manifest: pd.DataFrame | None = None

    # -- layout ---------------------------------------------------------------------------
    @property
    def clips_dir(self) -> Path:
        return self.path / "clips"

    @property
    def records_dir(self) -> Path:
        return self.path / "records"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.csv"

    def clip_path(self, clip_id: str | int) -> Path:
        return self.clips_dir / f"{clip_id}.npz"

    def record_path(self, clip_id: str | int) -> Path:
        return self.records_dir / f"{clip_id}.json"

    # -- reading --------------------------------------------------------------------------
    @property
    def manifest(self) -> pd.DataFrame:
        """One row per attempted clip, clip_id as string; rebuilt from records if out of date."""
        if self._manifest is None:
            if not self.manifest_path.is_file() and self.records_dir.is_dir():
                self.rebuild_manifest()
            if not self.manifest_path.is_file():
                raise StoreError(f"{self.path} has no manifest.csv: is it a feature store? "
                                 "Re-run extraction into it to (re)build the manifest.")
            self._manifest = pd.read_csv(self.manifest_path, dtype={"clip_id": str, "error": str},
                                         keep_default_na=False, na_values=[""])
            self._manifest["error"] = self._manifest["error"].fillna("")
        return self._manifest

    def ok_ids(self) -> list[str]:
        m = self.manifest
        return m.loc[m["status"] == "ok", "clip_id"].tolist()

    def __contains__(self, clip_id: object) -> bool:
        return self.clip_path(str(clip_id)).is_file()

    def __getitem__(self, clip_id: str | int) -> dict[str, np.ndarray]:
        path = self.clip_path(str(clip_id))
        if not path.is_file():
            raise StoreError(f"clip {clip_id} is not in feature store {self.path} (no {path.name})")
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}

    def __iter__(self) -> Iterator[str]:
        return iter(self.ok_ids())

    def __len__(self) -> int:
        return len(self.ok_ids())

    # -- writing (extraction) -------------------------------------------------------------
    def write_clip(self, clip_id: str, arrays: Mapping[str, np.ndarray]) -> None:
        missing = [k for k in CLIP_ARRAYS if k not in arrays]
        if missing:
            raise ValueError(f"clip {clip_id}: arrays {missing} missing")
        atomic_write_bytes(self.clip_path(clip_id), lambda f: np.savez(f, **arrays))

    def write_record(self, record: Mapping[str, Any]) -> None:
        row = {k: record.get(k) for k in MANIFEST_COLUMNS}
        payload = json.dumps(row, default=_json_default).encode()
        atomic_write_bytes(self.record_path(row["clip_id"]), lambda f: f.write(payload))

    def read_record(self, clip_id: str) -> dict[str, Any] | None:
        path = self.record_path(clip_id)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def is_done(self, clip_id: str) -> bool:
        """Finished successfully: an ok record and its clip file are both present."""
        record = self.read_record(clip_id)
        return bool(record) and record["status"] == "ok" and self.clip_path(clip_id).is_file()

    def rebuild_manifest(self) -> pd.DataFrame:
        rows = []
        for path in sorted(self.records_dir.glob("*.json")) if self.records_dir.is_dir() else []:
            try:
                rows.append(json.loads(path.read_text()))
            except json.JSONDecodeError:
                continue  # a record being written by another process; it is picked up next time
        frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
        frame = frame.sort_values("clip_id", key=_natural_key).reset_index(drop=True)
        atomic_write_bytes(self.manifest_path, lambda f: f.write(frame.to_csv(index=False).encode()))
        self._manifest = None
        return frame


def _natural_key(ids: pd.Series) -> pd.Series:
    """Sort numeric DFEW ids as numbers and other ids as text."""
    return ids.map(lambda s: (0, int(s), "") if str(s).isdigit() else (1, 0, str(s)))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value)} in a manifest record")
