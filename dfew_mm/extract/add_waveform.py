"""Bring a store of format 1 (written before clip files held `waveform`) to format 2 without
redoing faces and pose: decode each clip's audio track again, add the int16 waveform to its clip
file (atomically; the record's `npz_bytes` follows) and finally record `store_format: 2` in the
settings file. Clips that already have the array are skipped, so an interrupted run resumes.

    python preprocess/extract.py --add-waveform --dfew-root /data/DFEW --out features
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from tqdm import tqdm

from dfew_mm.constants import WAVEFORM_ARRAY
from dfew_mm.data.store import READ_ERRORS, STORE_FORMAT, FeatureStore
from dfew_mm.errors import StoreError
from dfew_mm.extract.audio import waveform_int16
from dfew_mm.extract.decode import decode_audio

log = logging.getLogger(__name__)


@dataclass
class AddSummary:
    added: int = 0
    already: int = 0

    def line(self) -> str:
        return f"waveform added to {self.added} clips ({self.already} had it); store format {STORE_FORMAT}"


def add_waveform(clips: Mapping[str, Path], store_path: str | Path, progress: bool | None = None) -> AddSummary:
    """Add `waveform` to every extracted clip of the store at `store_path`; `clips` are (id, video file)."""
    store = FeatureStore(store_path)
    settings = store.settings()
    if settings is None:
        raise StoreError(f"{store.path} has no {store.settings_path.name}: it is not a feature store written by "
                         "preprocess/extract.py")
    ids = store.ok_ids()
    videos = dict(clips)
    absent = [i for i in ids if i not in videos]
    if absent:
        raise StoreError(f"{len(absent)} extracted clips of {store.path} have no video among the clips given "
                         f"(e.g. {', '.join(absent[:5])}): point --dfew-root/--clips-dir at the videos the store "
                         "was extracted from")
    summary = AddSummary()
    for clip_id in tqdm(ids, desc="waveform", unit="clip", disable=None if progress is None else not progress):
        path = store.clip_path(clip_id)
        record = store.read_record(clip_id) or {}
        if WAVEFORM_ARRAY in store.array_shapes(clip_id):  # the headers alone: done before
            summary.already += 1
            size = path.stat().st_size
            if record.get("npz_bytes") != size:  # stopped between the clip file and its record
                store.write_record({**record, "npz_bytes": size})
            continue
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except READ_ERRORS as err:
            raise store.read_error(clip_id, err) from None
        arrays[WAVEFORM_ARRAY] = waveform_int16(decode_audio(videos[clip_id]))
        size = store.write_clip(clip_id, arrays)
        store.write_record({**record, "npz_bytes": size})
        summary.added += 1
    store.write_settings({**settings, "store_format": STORE_FORMAT})
    store.rebuild_manifest()
    return summary
