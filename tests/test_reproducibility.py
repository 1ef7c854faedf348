"""Same input, same output: a clip's features depend on that clip alone, and a seed fixes a run.

Real clips extracted in two orders, alone, by two workers and in memory as `predict` does give
bit-identical arrays; the demo's path twice with one seed gives the same summary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfew_mm.data.store import FeatureStore

# Real clips of several kinds: DFEW movie clips (one with two people), a CREMA-D studio clip, a GRID clip.
REAL_CLIPS = ("dfew_samples/happy.mp4", "dfew_samples/sad.mp4", "dfew_samples/surprise.mp4",
              "cremad/1001_DFA_ANG_XX.flv", "talking/bbaf2n.mpg")


def _same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    """Names of the arrays that are not bit-identical (dtype, shape and bytes)."""
    names = sorted(set(a) | set(b))
    return [n for n in names if n not in a or n not in b or a[n].dtype != b[n].dtype or a[n].shape != b[n].shape
            or a[n].tobytes() != b[n].tobytes()]


@pytest.mark.slow
def test_a_clips_arrays_depend_on_that_clip_alone(tmp_path, clips_dir, assets_dir):
    from dfew_mm.extract.options import ExtractOptions
    from dfew_mm.extract.run import run_extraction
    from dfew_mm.predict import extract_in_memory

    paths = [clips_dir / name for name in REAL_CLIPS]
    clips = [(p.stem, p) for p in paths]
    options = ExtractOptions(frames=8)

    def extract(order, name: str, workers: int = 1) -> Path:
        summary = run_extraction(order, tmp_path / name, options, workers=workers, assets_dir=assets_dir,
                                 progress=False)
        assert summary.failed == 0, summary.lines()
        return tmp_path / name

    stores = {"in order": extract(clips, "forward"), "reversed": extract(clips[::-1], "reversed"),
              "two workers": extract(clips, "two_workers", workers=2)}
    for clip in clips[::-1]:  # each clip alone, each run resuming the store of the runs before
        extract([clip], "alone")
    stores["alone, resumed"] = tmp_path / "alone"
    reference = FeatureStore(stores.pop("in order"))
    records = {c: {k: v for k, v in reference.read_record(c).items() if k != "extract_s"} for c, _ in clips}
    for how, path in stores.items():
        store = FeatureStore(path)
        for clip_id, _ in clips:
            assert not _same_arrays(reference[clip_id], store[clip_id]), (how, clip_id)
            record = {k: v for k, v in store.read_record(clip_id).items() if k != "extract_s"}  # a duration
            assert record == records[clip_id], (how, clip_id)
    # predict's path: one extractor in this process, clips in yet another order
    order = paths[2:] + paths[:2]
    for path, record, arrays in extract_in_memory(order, options, assets_dir):
        assert not _same_arrays(reference[path.stem], arrays), ("predict", path.stem)
        assert record["pose_rate"] == records[path.stem]["pose_rate"]


def test_the_extractor_version_is_recorded_and_old_stores_are_named(tmp_path, caplog):
    import logging
    import shutil

    from _train_stores import SMALL, make_store
    from dfew_mm.checkpoint import load_checkpoint
    from dfew_mm.config import load_config
    from dfew_mm.data.store import EXTRACTOR_VERSION
    from dfew_mm.errors import StoreError
    from dfew_mm.evaluate import evaluate
    from dfew_mm.extract.options import ExtractOptions
    from dfew_mm.extract.run import check_settings
    from dfew_mm.train import train

    dfew, old_path = make_store(tmp_path, clips=20, frames=6, face=32, audio=110)
    options = ExtractOptions(frames=6, face_size=32)
    old = FeatureStore(old_path)
    old.write_settings({**options.to_dict(), "store_format": 2})  # written before the version was recorded
    assert old.extractor_version() == 1 and EXTRACTOR_VERSION == 2
    new_path = tmp_path / "new_store"
    shutil.copytree(old_path, new_path)
    check_settings(FeatureStore(new_path), options, overwrite=True)  # as an extraction with --overwrite writes it
    assert FeatureStore(new_path).extractor_version() == EXTRACTOR_VERSION

    # extraction does not add clips of this version to an old store
    with pytest.raises(StoreError, match="extractor_version: store 1 vs now 2.*re-extract all of them with --overwrite"):
        check_settings(old, options, overwrite=False)

    # training on the old store warns and the checkpoint records the version its features came from
    cfg = load_config("tiny", [f"data.store={old_path}", f"data.dfew_root={dfew}", f"train.out_dir={tmp_path / 'run'}",
                               "model.modalities=[pose]", *SMALL, "train.epochs=1"])
    with caplog.at_level(logging.WARNING, logger="dfew_mm"):
        run = train(cfg)
    assert "comes from extractor version 1 (now 2)" in caplog.text
    assert load_checkpoint(run / "best.pt")[2]["extractor_version"] == 1

    # evaluating it on a store of the other version warns; on the training store it does not
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dfew_mm"):
        evaluate(run / "best.pt", old_path, out_csv=tmp_path / "same.csv", device="cpu")
        assert "extractor version" not in caplog.text
        evaluate(run / "best.pt", new_path, out_csv=tmp_path / "other.csv", device="cpu")
    assert f"{new_path} comes from extractor version 2 and the model's training store from version 1" in caplog.text
