"""DFEW's face frames as the face source: real DFEW samples, synthetic copies without originals, bad folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dfew_mm.cli import main
from dfew_mm.data.store import FeatureStore
from dfew_mm.datasets.dfew import CLIP_DIR, FACE_SOURCES, SPLIT_DIRNAME, TEST_DIR, TRAIN_DIR
from dfew_mm.datasets.frame_folders import frame_files
from dfew_mm.extract.decode import sample_indices

DFEW_SAMPLES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
REFERENCE = json.loads((Path(__file__).parent / "dfew_samples_reference.json").read_text())
FULL, SPARSE = FACE_SOURCES["clip_224x224"], FACE_SOURCES["clip_224x224_16f"]


def _write_splits(root: Path, labels: dict[int, int]) -> None:
    """Five folds over `labels` (clip id -> 1-based label): clip i is tested in fold i % 5 + 1."""
    for k in range(1, 6):
        for sub, tested in ((TRAIN_DIR, False), (TEST_DIR, True)):
            rows = [(f"{i:05d}", lab) for i, lab in labels.items() if (i % 5 + 1 == k) == tested]
            (root / SPLIT_DIRNAME / sub).mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows, columns=["video_name", "label"]).to_csv(
                root / SPLIT_DIRNAME / sub / f"set_{k}.csv", index=False)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line and " WARNING " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# -- the real DFEW samples, with face frame folders written from their frames ------------------------
@pytest.fixture(scope="module")
def sample_root(tmp_path_factory, clips_dir) -> Path:
    """A DFEW copy of the 7 real samples: originals (links) and both face frame folders, written here as
    DFEW's are: 224 px JPEG crops around the face (the reference boxes, interpolated between their frames)
    of every frame, and of 16 frames spread over the clip."""
    from decord import VideoReader, cpu

    from dfew_mm.extract.face import crop_faces

    root = tmp_path_factory.mktemp("dfew_frames")
    (root / CLIP_DIR).mkdir(parents=True)
    for clip_id, name in enumerate(DFEW_SAMPLES, start=1):
        video = clips_dir / "dfew_samples" / f"{name}.mp4"
        (root / CLIP_DIR / f"{clip_id:05d}.mp4").symlink_to(video)
        reader = VideoReader(str(video), ctx=cpu(0), num_threads=1)
        n = len(reader)
        known = np.asarray(REFERENCE[name]["face_boxes"], np.float32)  # (16, 4) at the sampled frames
        at = sample_indices(n, len(known))
        boxes = np.stack([np.interp(np.arange(n), at, known[:, c]) for c in range(4)], axis=1).astype(np.float32)
        full, sparse = root / FULL.folder / f"{clip_id:05d}", root / SPARSE.folder / f"{clip_id:05d}"
        full.mkdir(parents=True)
        sparse.mkdir(parents=True)
        for i in range(n):
            face = crop_faces(reader[i].asnumpy()[None], boxes[i:i + 1], 224, 0.25)[0]  # (224, 224, 3)
            Image.fromarray(face).save(full / f"{i + 1}.jpg", quality=90)
        for number, i in enumerate(sample_indices(n, 16), start=1):
            shutil.copyfile(full / f"{i + 1}.jpg", sparse / f"{number}.jpg")
    _write_splits(root, {i: i % 7 + 1 for i in range(1, len(DFEW_SAMPLES) + 1)})
    return root


@pytest.fixture(scope="module")
def sample_stores(sample_root, assets_dir, tmp_path_factory) -> dict[str, FeatureStore]:
    """The samples extracted with each face source (16 frames, 112 px faces), in one worker each: the pose
    landmarker sees the clips in the same order in every run."""
    out = tmp_path_factory.mktemp("frame_stores")
    stores = {}
    for source in ("detect", "clip_224x224", "clip_224x224_16f"):
        code = main(["extract", "--dfew-root", str(sample_root), "--out", str(out / source), "--face-source", source,
                     "--assets-dir", str(assets_dir), "--no-progress"])
        assert code == 0, source
        stores[source] = FeatureStore(out / source)
    return stores


@pytest.mark.parametrize("source", ["clip_224x224", "clip_224x224_16f"])
def test_faces_are_the_frame_files_resized(sample_root, sample_stores, source):
    store = sample_stores[source]
    manifest = store.manifest.set_index("clip_id")
    assert (manifest["status"] == "ok").all() and manifest["has_original"].all()
    assert store.settings()["face_source"] == source
    for clip_id in manifest.index:
        x = store[clip_id]
        files, _ = frame_files(sample_root / FACE_SOURCES[source].folder / f"{int(clip_id):05d}")
        assert np.array_equal(x["frame_index"], sample_indices(len(files), 16))  # numeric order, as detect spaces
        # read and resized by another library: Pillow's box filter is OpenCV's area resampling at 224 -> 112 px
        expected = np.stack([np.asarray(Image.open(files[k]).convert("RGB").resize((112, 112), Image.BOX))
                             for k in x["frame_index"]])  # (16, 112, 112, 3)
        assert np.abs(x["faces"].astype(int) - expected).max() <= 1, clip_id
        assert x["face_mask"].all() and np.isnan(x["face_boxes"]).all()
        assert manifest.at[clip_id, "error"] == ""


@pytest.mark.parametrize("source", ["clip_224x224", "clip_224x224_16f"])
def test_pose_and_audio_as_with_detect(sample_stores, source):
    """Every frame (or DFEW's 16 spread over the clip) at T = 16 shows the original frames that detect
    samples: pose, audio, waveform, times and whole-frame luma are detect's exactly."""
    detected, framed = sample_stores["detect"], sample_stores[source]
    for clip_id in detected.ok_ids():
        a, b = detected[clip_id], framed[clip_id]
        for name in ("pose", "pose_mask", "audio", "waveform", "frame_time", "luma"):
            assert np.array_equal(a[name], b[name]), (clip_id, name)
    columns = ["n_frames", "fps", "duration_s", "width", "height", "pose_rate", "has_audio", "audio_rms_db",
               "luma_mean"]
    pd.testing.assert_frame_equal(detected.manifest[columns], framed.manifest[columns])


def test_face_source_is_a_store_setting(sample_root, sample_stores, assets_dir, capsys):
    """A store of one face source refuses clips of another; evaluate's store check names the setting."""
    store = sample_stores["clip_224x224_16f"]
    code = main(["extract", "--dfew-root", str(sample_root), "--out", str(store.path), "--assets-dir", str(assets_dir),
                 "--no-progress"])
    err = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "face_source: store 'clip_224x224_16f' vs now 'detect'" in err and "own store" in err, err


def test_unknown_face_source_lists_the_valid_ones(sample_root, tmp_path, capsys):
    assert main(["extract", "--dfew-root", str(sample_root), "--out", str(tmp_path / "x"), "--face-source",
                 "clip_112", "--no-progress"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "error: unknown face source 'clip_112': choose one of detect, clip_224x224, clip_224x224_16f")
    assert main(["extract", "--clips-dir", str(sample_root), "--out", str(tmp_path / "x"), "--face-source",
                 "clip_224x224", "--no-progress"]) == 2
    assert "give --dfew-root" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


# -- a copy without Clip/original: face frames and split files only --------------------------------
@pytest.fixture(scope="module")
def frames_only(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("frames_only")
    assert main(["synth", "--out", str(root), "--clips", "21", "--seconds", "1", "--face-frames", "--no-originals",
                 "--no-progress"]) == 0
    shutil.rmtree(root / FULL.folder)  # many copies hold the 16 frames alone
    return root


def test_synth_writes_both_frame_folders(tmp_path):
    from dfew_mm.synth import SynthConfig, generate_dataset

    generate_dataset(tmp_path, SynthConfig(clips=2, seconds=0.5, face_frames=True))
    for clip in ("00001", "00002"):
        full, _ = frame_files(tmp_path / FULL.folder / clip)
        sparse, _ = frame_files(tmp_path / SPARSE.folder / clip)
        assert len(full) == 12 and [p.name for p in sparse] == [f"{i}.jpg" for i in range(1, 17)]
        for k, path in zip(sample_indices(12, 16), sparse):  # the 16 are frames of the full-rate folder
            assert path.read_bytes() == full[k].read_bytes()
        assert Image.open(full[0]).size == (224, 224)
        assert (tmp_path / CLIP_DIR / f"{clip}.mp4").is_file()


def test_a_copy_without_originals(frames_only, tmp_path, capsys, assets_dir):
    root = frames_only
    assert main(["folds", "--dfew-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "0 of 21 listed clips have a video file" in out and "no such folder" in out
    assert "21 of 21 listed clips have face frames under" in out and "clip_224x224_16f" in out
    assert "with_clip_224x224_16f" in out and "with_video" in out

    assert main(["extract", "--dfew-root", str(root), "--out", str(tmp_path / "detect"), "--no-progress"]) == 2
    assert "use --face-source clip_224x224_16f" in _one_error_line(capsys.readouterr().err)

    store = tmp_path / "store"
    assert main(["extract", "--dfew-root", str(root), "--out", str(store), "--face-source", "clip_224x224_16f",
                 "--assets-dir", str(assets_dir), "--no-progress"]) == 0
    manifest = FeatureStore(store).manifest
    assert (manifest["status"] == "ok").all() and not manifest["has_original"].any()
    assert manifest["error"].str.contains("no original clip: faces only, no pose or audio").all()
    x = FeatureStore(store)["3"]
    assert x["faces"].shape == (16, 112, 112, 3) and x["face_mask"].all() and not x["pose_mask"].any()
    assert x["audio"].shape == (0, 128) and x["waveform"].shape == (0,)
    assert np.allclose(np.diff(x["frame_time"]), 1 / 24)  # DFEW's nominal frame rate, as the note says

    common = ["--config", "tiny", "--store", str(store), "--dfew-root", str(root), "train.epochs=1", "--no-progress"]
    assert main(["train", *common, "--modalities", "video", "--out", str(tmp_path / "video")]) == 0
    assert (tmp_path / "video" / "test_metrics.json").is_file()
    capsys.readouterr()
    for modalities, named in (("audio", "audio needs"), ("video,pose", "pose needs")):
        assert main(["train", *common, "--modalities", modalities, "--out", str(tmp_path / modalities)]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert named in line and "21 of 21 clips have none" in line and "ROOT/Clip/original/<id>.mp4" in line, line
        assert "--face-source clip_224x224_16f" in line and "--modalities video" in line, line
        assert not (tmp_path / modalities / "last.pt").exists()

    # evaluate treats another face source as any other differing extraction setting
    other = shutil.copytree(store, tmp_path / "other")
    settings = json.loads((other / "extract_settings.json").read_text())
    (other / "extract_settings.json").write_text(json.dumps({**settings, "face_source": "detect"}))
    code = main(["evaluate", "--checkpoint", str(tmp_path / "video" / "best.pt"), "--store", str(other), "--out",
                 str(tmp_path / "p.csv")])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "face_source 'detect' where the training store" in line, line
    assert "--face-source clip_224x224_16f" in line


def test_darkening_face_frames_darkens_the_frames(frames_only, tmp_path, assets_dir):
    stores = {}
    for strength in ("0", "1"):
        assert main(["extract", "--dfew-root", str(frames_only), "--out", str(tmp_path / strength), "--face-source",
                     "clip_224x224_16f", "--darken", strength, "--ids", "1", "2", "--assets-dir", str(assets_dir),
                     "--no-progress"]) == 0
        stores[strength] = FeatureStore(tmp_path / strength)
    for clip_id in ("1", "2"):
        lit, dark = stores["0"][clip_id], stores["1"][clip_id]
        assert dark["faces"].mean() < 0.3 * lit["faces"].mean() and (dark["luma"] < 0.3 * lit["luma"]).all()
    assert stores["1"].settings()["darken"] == 1.0


def test_predict_detects_the_faces_of_new_clips(tmp_path):
    """New clips come without DFEW's face frames: predict extracts them with the detector."""
    from dfew_mm.config import load_config
    from dfew_mm.predict import extraction_options

    (tmp_path / "extract_settings.json").write_text(json.dumps({"frames": 8, "face_size": 64,
                                                                "face_source": "clip_224x224_16f"}))
    options = extraction_options(load_config("tiny", [f"data.store={tmp_path}"]))
    assert (options.face_source, options.frames, options.face_size) == ("detect", 8, 64)


# -- bad frame folders: per-clip outcomes, never a crashed run ---------------------------------------
def test_bad_frame_folders_give_per_clip_outcomes(tmp_path, assets_dir):
    from dfew_mm.synth import SynthConfig, generate_dataset

    root = tmp_path / "dfew"
    generate_dataset(root, SynthConfig(clips=9, seconds=1.0, face_frames=True))  # 24 frames a clip, with originals
    folder = lambda clip: root / FULL.folder / f"{clip:05d}"  # noqa: E731
    sampled = sample_indices(24, 8) + 1  # the frame numbers T = 8 reads
    (folder(1) / "24.jpg").unlink()  # 23 frames for the 24 of the original
    (folder(2) / f"{sampled[3]}.jpg").write_bytes(b"not a jpeg")
    for path in folder(3).iterdir():
        path.write_bytes(b"\xff\xd8 cut")
    Image.new("RGB", (200, 180)).save(folder(4) / f"{sampled[5]}.jpg")
    shutil.rmtree(folder(5))
    folder(5).mkdir()
    shutil.rmtree(folder(6))
    (root / CLIP_DIR / "00006.mp4").unlink()
    Image.new("RGB", (224, 224)).save(folder(7) / f"{sampled[0]}.jpg")  # black
    shutil.rmtree(folder(8))
    for name in ("10", "2.jpg"):  # numbered wrongly or not a folder: skipped with a warning
        (folder(9).parent / name).write_text("x")
    _write_splits(root, {**{i: i % 7 + 1 for i in range(1, 10)}, 42: 3})  # 42: listed, nothing on disk

    out = tmp_path / "store"
    assert main(["extract", "--dfew-root", str(root), "--out", str(out), "--face-source", "clip_224x224",
                 "--frames", "8", "--assets-dir", str(assets_dir), "--no-progress"]) == 0
    m = FeatureStore(out).manifest.set_index("clip_id")
    assert sorted(m.index, key=int) == [str(i) for i in (*range(1, 10), 42)]
    ok = m["status"] == "ok"
    assert set(m.index[ok]) == {"1", "2", "7", "9"}
    assert "23 face frames for the 24 frames of the original: spread over its duration" in m.at["1", "error"]
    assert f"1 of 8 sampled face frames unreadable ({sampled[3]}.jpg)" in m.at["2", "error"]
    assert "none of the 8 sampled face frames" in m.at["3", "error"] and "reads as an image" in m.at["3", "error"]
    assert "different sizes" in m.at["4", "error"] and "200x180" in m.at["4", "error"]
    assert "no face frames in" in m.at["5", "error"]
    for clip in ("6", "42"):
        assert m.at[clip, "error"].startswith("neither an original clip in"), m.at[clip, "error"]
    assert "no clip_224x224 face frame folder" in m.at["8", "error"]
    assert "1 of 8 sampled face frames blank" in m.at["7", "error"] and m.at["9", "error"] == ""
    store = FeatureStore(out)
    assert store["2"]["face_mask"].sum() == 7 and store["7"]["face_mask"].sum() == 7
    assert store["9"]["face_mask"].all() and m.at["9", "face_rate"] == 1.0
    # the spread: face frame k of 23 shows original frame sample_indices(24, 23)[k], and is timed as that frame
    shown = sample_indices(23, 8)
    original = sample_indices(24, 23)[shown]
    assert np.array_equal(store["1"]["frame_index"], shown) and not np.array_equal(original, shown)
    assert np.allclose(store["1"]["frame_time"], original / 24, atol=1e-3)


def test_frames_are_read_in_numeric_order(tmp_path):
    from dfew_mm.extract.face_frames import read_face_frames

    ramp = np.tile(np.arange(32, dtype=np.uint8)[None, :, None], (32, 1, 3)) * 4  # (32, 32, 3), not blank
    for number in range(1, 13):  # 1.png, 2.png, ..., 10.png, 11.png, 12.png: 10 sorts after 9, not after 1
        image = ramp.copy()
        image[0, 0] = number * 20
        Image.fromarray(image).save(tmp_path / f"{number}.png")
    files, others = frame_files(tmp_path)
    assert [p.name for p in files] == [f"{i}.png" for i in range(1, 13)] and others == []
    frames = read_face_frames(tmp_path, 12)
    assert frames.images[:, 0, 0, 0].tolist() == [i * 20 for i in range(1, 13)] and frames.count == 12
    assert frames.mask.all()
