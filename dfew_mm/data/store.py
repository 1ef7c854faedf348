"""The feature store written by extraction and read by training and evaluation.

    FEATURES/manifest.csv        one row per clip attempted (MANIFEST_COLUMNS)
    FEATURES/clips/<id>.npz      arrays of one clip (CLIP_ARRAYS), written atomically
    FEATURES/records/<id>.json   the manifest row of one clip; manifest.csv is rebuilt from these,
                                 so parallel workers and shards on many machines never share a file

Every write goes through a temporary file named after its writer (dfew_mm.files), so a crash, a
kill or a full disk never leaves a half-written file under the final name. What the store serves
is verified: a clip counts as present only if its file has the size recorded when it
was written and its zip directory reads; the manifest is rebuilt whenever it disagrees with the
records.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from dfew_mm.datasets.base import natural_key
from dfew_mm.errors import StoreError, WriteError
from dfew_mm.files import atomic_write_bytes

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "clip_id", "status", "error", "n_frames", "fps", "duration_s", "width", "height",
    "face_rate", "pose_rate", "has_audio", "audio_rms_db", "luma_mean", "face_luma_mean", "extract_s",
    "npz_bytes", "has_original",
)
INTEGER_COLUMNS = ("n_frames", "width", "height", "npz_bytes")
# name -> (dtype, shape); T sampled frames, S face size, F filterbank frames (10 ms each).
CLIP_ARRAYS = {
    "faces": ("uint8", "(T, S, S, 3) RGB face crops"),
    "face_mask": ("bool", "(T,) a face was detected in that frame (face frames: the frame exists, not blank)"),
    "face_boxes": ("float32", "(T, 4) normalised x1, y1, x2, y2; NaN for a dataset's face frames"),
    "pose": ("float32", "(T, 33, 4) x, y, z, visibility"),
    "pose_mask": ("bool", "(T,) a body was detected in that frame"),
    "audio": ("float16", "(F, 128) log-mel filterbank, 16 kHz, 10 ms hop"),
    "frame_index": ("int32", "(T,) index of the sampled frame in the clip (face frames: in its frame folder)"),
    "frame_time": ("float32", "(T,) time of the sampled frame, seconds"),
    "luma": ("float32", "(T,) mean BT.601 luma of the whole frame, 0..255"),
}
# What only a clip's original video gives. A clip extracted from a dataset's face frames without its
# original (manifest column has_original false) holds them empty: pose all-zero with pose_mask all
# false, audio (0, 128), waveform (0,); models that read them refuse such clips (dfew_mm.data.splits).
ORIGINAL_ARRAYS = ("pose", "pose_mask", "audio", "waveform")
OPTIONAL_ARRAYS = {"blendshapes": ("float32", "(T, 52) FaceLandmarker blendshape scores")}
# Store format, recorded as `store_format` in the settings file. 2: every clip file also holds
# `waveform` (N,) int16, the 16 kHz mono audio that waveform speech encoders read; 1 (no key): before.
# `preprocess/extract.py --add-waveform --out STORE ...` turns a format-1 store into format 2.
STORE_FORMAT = 2
# Extractor version, recorded as `extractor_version` in the settings file: what the extractor's code makes of a
# clip beyond its settings. 2: a clip's arrays depend on that clip alone, whatever the order, worker, shard or
# resume that extracts it; 1 (no key): its pose visibilities carried over from the clip the same worker
# extracted before it (docs/reproducibility.md). Stores of two versions are not mixed; re-extract old ones.
EXTRACTOR_VERSION = 2
FORMAT_ARRAYS = {"waveform": ("int16", "(N,) 16 kHz mono audio samples; (0,) without audio (format 2)")}
# What reading a damaged npz raises (truncated, overwritten, bad CRC, bad array header).
READ_ERRORS = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error)
SETTINGS_FILE = "extract_settings.json"  # the extraction settings (dfew_mm.extract.options.ExtractOptions)
REPAIR_HINT = ("re-run the extraction into this store (it redoes clips whose files are damaged), "
               "or only these clips with --ids")


# -- reading: is a clip file usable? ------------------------------------------------------------
def check_zip_file(path: Path) -> str:
    """'' when `path` is an npz whose zip directory reads, else why not."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except FileNotFoundError:
        return "missing"
    except READ_ERRORS as err:
        return f"damaged ({err})"
    return ""


def check_clip_file(path: Path, expected_bytes: object = None) -> str:
    """'' when the npz at `path` can be served, else why not.

    Cheap (a stat and a 22-byte read; about 50 us a clip): the size must be the one recorded when
    the file was written (`expected_bytes`, None for older stores) and the zip directory must end
    where the file ends. Anything unusual gets the full zip directory read, which names the damage.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "clip file missing"
    except OSError as err:
        return f"clip file unreadable ({err.strerror})"
    expected = _as_size(expected_bytes)
    if expected is not None and size != expected:
        kind = "truncated" if size < expected else "damaged"
        return f"clip file {kind} ({size} bytes, {expected} when written)"
    if _zip_ends_at(path, size):
        return ""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except READ_ERRORS as err:
        return f"clip file damaged ({err})"
    missing = [name for name in CLIP_ARRAYS if f"{name}.npy" not in names]
    if missing:
        return f"clip file incomplete (no {', '.join(missing)})"
    return ""


_EOCD = struct.Struct("<4s4H2LH")  # zip end-of-central-directory record, without comment: 22 bytes


def _zip_ends_at(path: Path, size: int) -> bool:
    """The zip directory's end record closes the file and its directory lies just before it."""
    if size < _EOCD.size:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(size - _EOCD.size)
            end = handle.read(_EOCD.size)
    except OSError:
        return False
    if len(end) != _EOCD.size:
        return False
    signature, _, _, _, _, directory_size, directory_offset, comment = _EOCD.unpack(end)
    return signature == b"PK\x05\x06" and comment == 0 and directory_offset + directory_size + _EOCD.size == size


def _as_size(value: object) -> int | None:
    try:
        size = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(size) if np.isfinite(size) and size >= 0 else None


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

    @property
    def settings_path(self) -> Path:
        return self.path / SETTINGS_FILE

    @property
    def folders(self) -> tuple[Path, ...]:
        """Where the store writes files (for temporary-file clean-up)."""
        return self.path, self.clips_dir, self.records_dir

    # -- reading --------------------------------------------------------------------------
    @property
    def manifest(self) -> pd.DataFrame:
        """One row per attempted clip, clip_id as string; rebuilt from the records when it disagrees
        with them (a clip missing or extra, or a record newer than the manifest)."""
        if self._manifest is None:
            self._manifest = self._current_manifest()
        return self._manifest

    def _record_times(self) -> dict[str, int] | None:
        """clip id -> modification time (ns) of its record; None without a records folder."""
        try:
            entries = list(os.scandir(self.records_dir))
        except FileNotFoundError:
            return None
        times = {}
        for entry in entries:
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                try:
                    times[entry.name[:-5]] = entry.stat().st_mtime_ns
                except FileNotFoundError:
                    continue
        return times

    def manifest_staleness(self) -> str:
        """'' when manifest.csv matches the records, else how it differs (cheap: one folder listing)."""
        return self._manifest_state()[1]

    def _manifest_state(self) -> tuple[pd.DataFrame | None, str]:
        """(manifest.csv as read, '' or how it disagrees with the records)."""
        records = self._record_times()
        try:
            written = self.manifest_path.stat().st_mtime_ns
            frame = _parse_manifest(self.manifest_path.read_bytes())
        except FileNotFoundError:
            return None, "" if records is None else "no manifest.csv"
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            return None, f"manifest.csv unreadable ({err})"
        if records is None:
            return frame, ""  # a store copied without its records: the manifest is all there is
        listed = set(frame["clip_id"])
        if listed != set(records):
            unlisted, orphans = len(set(records) - listed), len(listed - set(records))
            return frame, f"{unlisted} records not in manifest.csv, {orphans} rows without a record"
        if records and max(records.values()) > written:
            return frame, "records newer than manifest.csv"
        return frame, ""

    def _current_manifest(self) -> pd.DataFrame:
        frame, stale = self._manifest_state()
        if not stale:
            if frame is None:
                raise StoreError(f"{self.path} has no manifest.csv and no records/: is it a feature store? "
                                 "Extract into it with `python preprocess/extract.py ... --out STORE`.")
            return frame
        if self._record_times() is None:
            raise StoreError(f"{self.manifest_path}: {stale}, and there are no records to rebuild it from; "
                             "re-run the extraction into this store")
        try:
            return self.rebuild_manifest()
        except WriteError as err:  # a read-only store: serve the records, say so once
            log.warning("%s is out of date (%s) and cannot be rewritten (%s); using the records", self.manifest_path,
                        stale, err)
            return self._frame_from_records()[0]

    def refresh_manifest(self) -> str:
        """Rebuild manifest.csv if it disagrees with the records; returns how it disagreed ('' if not)."""
        frame, stale = self._manifest_state()
        if stale and self._record_times() is not None:
            self.rebuild_manifest()
        else:
            self._manifest = frame
        return stale

    def settings(self) -> dict[str, Any] | None:
        """The extraction settings saved with the store, or None for a store without them."""
        try:
            settings = json.loads(self.settings_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise StoreError(f"{self.settings_path} cannot be read ({err}); re-run the extraction that made "
                             f"{self.path} to rewrite it") from None
        if not isinstance(settings, dict):
            raise StoreError(f"{self.settings_path} is not a JSON object of extraction settings")
        return settings

    def write_settings(self, settings: Mapping[str, Any]) -> None:
        """Save the extraction settings with the store (atomically: a failed write keeps the previous file)."""
        payload = json.dumps(dict(settings), indent=2).encode()
        atomic_write_bytes(self.settings_path, lambda f: f.write(payload))

    def extractor_version(self) -> int | None:
        """The extractor version that wrote the store (EXTRACTOR_VERSION; 1 for settings written before it was
        recorded), or None for a store without a settings file (not written by preprocess/extract.py)."""
        settings = self.settings()
        return None if settings is None else int(settings.get("extractor_version", 1))

    def scene_darken(self) -> float:
        """The scene-level darkening strength the store was extracted with (`--darken`; 0: none)."""
        value = (self.settings() or {}).get("darken") or 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise StoreError(f"{self.settings_path}: darken={value!r} is not a strength in 0..1")
        return float(value)

    def array_shapes(self, clip_id: str | int) -> dict[str, tuple[int, ...]]:
        """Array name -> shape in one clip file, from the array headers alone (no data is read)."""
        path = self.clip_path(str(clip_id))
        shapes = {}
        try:
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if name.endswith(".npy"):
                        with archive.open(name) as handle:
                            version = np.lib.format.read_magic(handle)
                            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                    else np.lib.format.read_array_header_2_0)
                            shapes[name[:-4]] = tuple(read(handle)[0])
        except READ_ERRORS as err:
            raise self.read_error(str(clip_id), err) from None
        return shapes

    def ok_ids(self) -> list[str]:
        m = self.manifest
        return m.loc[m["status"] == "ok", "clip_id"].tolist()

    def __contains__(self, clip_id: object) -> bool:
        return self.clip_path(str(clip_id)).is_file()

    def __getitem__(self, clip_id: str | int) -> dict[str, np.ndarray]:
        path = self.clip_path(str(clip_id))
        if not path.is_file():
            raise StoreError(f"clip {clip_id} is not in feature store {self.path} (no {path.name})")
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except READ_ERRORS as err:
            raise self.read_error(str(clip_id), err) from None

    def read_error(self, clip_id: str, err: BaseException) -> StoreError:
        """The error for a clip file that cannot be read: names the clip and the repair."""
        return StoreError(f"cannot read clip {clip_id} from {self.clip_path(clip_id)} ({type(err).__name__}: {err}); "
                          f"{REPAIR_HINT}, e.g. `dfew_mm extract ... --out {self.path} --ids {clip_id}`")

    def __iter__(self) -> Iterator[str]:
        return iter(self.ok_ids())

    def __len__(self) -> int:
        return len(self.ok_ids())

    def clip_problems(self, clip_ids: Iterable[str]) -> dict[str, str]:
        """clip id -> why its file cannot be served ('' when it can), using the sizes in the manifest."""
        manifest = self.manifest.set_index("clip_id")
        sizes = manifest["npz_bytes"] if "npz_bytes" in manifest else pd.Series(dtype=float)
        return {i: check_clip_file(self.clip_path(i), sizes.get(i)) for i in clip_ids}

    def unreadable_error(self, problems: Mapping[str, str], context: str, shown: int = 20,
                         max_ids: int = 200) -> StoreError:
        """One error listing the clips whose files cannot be read, with the commands that repair them."""
        ids = sorted(problems, key=natural_key)
        details = ", ".join(f"{i} ({problems[i]})" for i in ids[:shown])
        rest = ids[shown:max_ids]
        more = f", and {', '.join(rest)}" if rest else ""
        if len(ids) > max_ids:
            more += f" ... ({len(ids)} in all)"
        id_args = " ".join(ids[:max_ids]) + (" ..." if len(ids) > max_ids else "")
        return StoreError(
            f"{context}: {len(ids)} clip files in feature store {self.path} cannot be read: {details}{more}. "
            f"Repair: re-run the same extraction into {self.path} (it redoes damaged clips), or only these with "
            f"`dfew_mm extract --dfew-root ROOT --out {self.path} --ids {id_args}` (or --clips-dir, as when the "
            "store was made); or pass --allow-missing (data.allow_missing=true) to leave them out and list them "
            "in excluded_clips.csv")

    # -- writing (extraction) -------------------------------------------------------------
    def write_clip(self, clip_id: str, arrays: Mapping[str, np.ndarray]) -> int:
        """Write a clip's arrays atomically; returns the file size (recorded for verification)."""
        missing = [k for k in CLIP_ARRAYS if k not in arrays]
        if missing:
            raise ValueError(f"clip {clip_id}: arrays {missing} missing")
        path = self.clip_path(clip_id)
        atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
        return path.stat().st_size

    def write_record(self, record: Mapping[str, Any]) -> None:
        """Write a clip's manifest row; an ok record gets the size of its clip file if not given."""
        row = {k: record.get(k) for k in MANIFEST_COLUMNS}
        if row["status"] == "ok" and row["npz_bytes"] is None:
            try:
                row["npz_bytes"] = self.clip_path(row["clip_id"]).stat().st_size
            except FileNotFoundError:
                pass
        payload = json.dumps(row, default=_json_default).encode()
        atomic_write_bytes(self.record_path(row["clip_id"]), lambda f: f.write(payload))

    def read_record(self, clip_id: str) -> dict[str, Any] | None:
        path = self.record_path(clip_id)
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def is_done(self, clip_id: str) -> bool:
        """Finished successfully: an ok record and a clip file of the recorded size whose zip
        directory reads (so truncated or damaged clips are extracted again)."""
        record = self.read_record(clip_id)
        if not record or record.get("status") != "ok":
            return False
        return not check_clip_file(self.clip_path(clip_id), record.get("npz_bytes"))

    def _frame_from_records(self) -> tuple[pd.DataFrame, bytes, int | None]:
        """(manifest frame, its CSV text, newest record mtime in ns) from the records folder."""
        rows, damaged, newest = [], [], None
        times = self._record_times() or {}
        for clip_id in times:
            try:
                row = json.loads(self.record_path(clip_id).read_text())
            except FileNotFoundError:
                continue  # replaced meanwhile: a newer record is picked up next time
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                damaged.append(clip_id)
                continue
            if not isinstance(row, dict) or "clip_id" not in row:
                damaged.append(clip_id)
                continue
            rows.append(row)
            newest = max(newest or 0, times[clip_id])
        if damaged:
            log.warning("%s: %d damaged records left out of the manifest (their clips count as not extracted "
                        "and are redone by the next extraction): %s", self.records_dir, len(damaged),
                        ", ".join(sorted(damaged, key=natural_key)[:10]))
        frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
        for column in INTEGER_COLUMNS:  # whole numbers stay whole beside the empty cells of failed clips
            frame[column] = pd.to_numeric(frame[column], errors="coerce").round().astype("Int64")
        frame = frame.sort_values("clip_id", key=_natural_key).reset_index(drop=True)
        text = frame.to_csv(index=False).encode()
        return _parse_manifest(text), text, newest

    def rebuild_manifest(self) -> pd.DataFrame:
        """Write manifest.csv from the records (atomically) and return it."""
        frame, text, newest = self._frame_from_records()
        atomic_write_bytes(self.manifest_path, lambda f: f.write(text))
        if newest is not None:
            # Dated like the newest record it includes: any record written after that one, even
            # while this rebuild ran, is newer than the manifest and triggers the next rebuild.
            try:
                os.utime(self.manifest_path, ns=(newest, newest))
            except OSError:
                pass
        self._manifest = frame
        return frame


def _parse_manifest(data: bytes) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(data), dtype={"clip_id": str, "error": str}, keep_default_na=False,
                        na_values=[""])
    if "clip_id" not in frame or "status" not in frame:
        raise ValueError("no clip_id and status columns")
    frame["error"] = frame["error"].fillna("") if "error" in frame else ""
    return frame


def _natural_key(ids: pd.Series) -> pd.Series:
    """Sort numeric DFEW ids as numbers and other ids as text."""
    return ids.map(natural_key)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value)} in a manifest record")
