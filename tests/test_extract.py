"""Extraction: real MediaPipe, decord and PyAV on real clips, broken inputs, resume, shards, assets."""

from __future__ import annotations

import functools
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dfew_mm.cli import main
from dfew_mm.constants import N_MELS
from dfew_mm.data.store import MANIFEST_COLUMNS, SETTINGS_FILE, FeatureStore
from dfew_mm.errors import AssetError
from dfew_mm.extract import assets
from dfew_mm.extract.audio import log_mel_fbank
from dfew_mm.extract.decode import decode_clip, sample_indices
from dfew_mm.extract.face import fill_and_smooth, select_main_face, track_faces
from dfew_mm.extract.run import in_shard, list_clips, select_clips
from dfew_mm.extract.worker import ExtractOptions

DFEW_SAMPLES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
T, S = 16, 112
# Face masks and boxes, pose masks of the DFEW samples as extracted by ExtractOptions(): detection
# quality must not regress when extraction changes.
REFERENCE = json.loads((Path(__file__).parent / "dfew_samples_reference.json").read_text())


# -- inputs that must not stop a run ------------------------------------------------------------
def _write_video(path: Path, n_frames: int, colour=None, audio: bool = False, size=(160, 120),
                 options: dict | None = None) -> Path:
    """H.264 (+ AAC) clip written with PyAV: moving noise, or a plain colour if `colour` is given."""
    width, height = size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=options or {}) as container:
        video = container.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=44_100) if audio else None
        for _ in range(n_frames):
            frame = (np.full((height, width, 3), colour, np.uint8) if colour is not None
                     else rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        if sound is not None:
            tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(44_100) / 44_100)).astype(np.float32)
            for start in range(0, tone.size, 1024):
                chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="flt", layout="mono")
                chunk.sample_rate = 44_100
                container.mux(sound.encode(chunk))
            container.mux(sound.encode())
    return path


def _make_mixed_folder(folder: Path, clips_dir: Path) -> Path:
    """Real clips (linked) plus every kind of bad or degraded input, in one folder of videos."""
    folder.mkdir()
    for name in DFEW_SAMPLES:
        (folder / f"{name}.mp4").symlink_to(clips_dir / "dfew_samples" / f"{name}.mp4")
    for name in ("1001_DFA_ANG_XX", "1001_DFA_HAP_XX"):
        (folder / f"{name}.flv").symlink_to(clips_dir / "cremad" / f"{name}.flv")
    (folder / "bbaf2n.mpg").symlink_to(clips_dir / "talking" / "bbaf2n.mpg")
    (folder / "zero_bytes.mp4").write_bytes(b"")
    data = (clips_dir / "dfew_samples" / "sad.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])  # the index (moov) is cut off
    whole = _write_video(folder.parent / "whole.mp4", 48, audio=True, size=(320, 240),
                         options={"movflags": "faststart"}).read_bytes()  # index first, then the data
    (folder / "cut_short.mp4").write_bytes(whole[: len(whole) // 2])
    frames = [Image.fromarray(np.full((96, 128, 3), 20 * i, np.uint8)) for i in range(12)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    _write_video(folder / "silent_noise.mp4", 30)  # no audio track
    _write_video(folder / "plain_colour.mp4", 30, colour=(40, 120, 200), audio=True)  # no face
    _write_video(folder / "five_frames.mp4", 5, audio=True)  # shorter than T
    return folder


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory, clips_dir, assets_dir):
    root = tmp_path_factory.mktemp("mixed")
    folder = _make_mixed_folder(root / "videos", clips_dir)
    out = root / "features"
    code = main(["extract", "--clips-dir", str(folder), "--out", str(out), "--workers", "2",
                 "--assets-dir", str(assets_dir), "--no-progress"])
    store = FeatureStore(out)
    return code, store, store.manifest.set_index("clip_id")


def test_run_finishes_with_one_row_per_clip(mixed_store):
    code, store, manifest = mixed_store
    assert code == 0
    assert tuple(store.manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 17
    assert not list(store.path.rglob("*.tmp"))


@pytest.mark.parametrize("clip_id", DFEW_SAMPLES)
def test_dfew_sample_arrays(mixed_store, clip_id):
    _, store, manifest = mixed_store
    row = manifest.loc[clip_id]
    assert row["status"] == "ok" and row["error"] == ""
    assert row["has_audio"] and row["width"] >= 1024 and row["fps"] == pytest.approx(23.976, abs=0.01)
    x = store[clip_id]
    expected = {"faces": ("uint8", (T, S, S, 3)), "face_mask": ("bool", (T,)), "face_boxes": ("float32", (T, 4)),
                "pose": ("float32", (T, 33, 4)), "pose_mask": ("bool", (T,)), "frame_index": ("int32", (T,)),
                "frame_time": ("float32", (T,)), "luma": ("float32", (T,))}
    for name, (dtype, shape) in expected.items():
        assert (str(x[name].dtype), x[name].shape) == (dtype, shape), name
    # Audio: one 10 ms fbank frame per 160 samples over the whole clip.
    assert x["audio"].dtype == np.float16 and x["audio"].shape[1] == N_MELS
    assert abs(x["audio"].shape[0] - 100 * row["duration_s"]) < 10
    assert np.isfinite(x["audio"].astype(np.float32)).all()
    assert np.all(np.diff(x["frame_index"]) > 0) and x["frame_index"][-1] < row["n_frames"]
    assert np.allclose(x["frame_time"], x["frame_index"] / row["fps"], atol=0.05)
    boxes = x["face_boxes"]
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert row["face_rate"] == pytest.approx(x["face_mask"].mean())
    # Detected faces are real image content, not the black padding of an off-frame crop.
    assert x["faces"][x["face_mask"]].mean() > 10
    assert 0 < row["luma_mean"] < 255 and np.allclose(x["luma"].mean(), row["luma_mean"], atol=0.01)


def test_cli_defaults_are_extract_options(mixed_store):
    _, store, _ = mixed_store  # extracted by the CLI with no option flags
    assert json.loads((store.path / SETTINGS_FILE).read_text()) == {**ExtractOptions().to_dict(), "store_format": 2,
                                                                    "extractor_version": 2}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (N, 4) x1, y1, x2, y2 boxes -> (N,) intersection over union."""
    inter = (np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
             * np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None))
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_dfew_samples_faces_and_pose(mixed_store):
    _, store, manifest = mixed_store
    rows = manifest.loc[list(DFEW_SAMPLES)]
    assert rows["face_rate"].mean() >= 0.95  # 0.964 with the default face model (auto)
    assert rows["pose_rate"].mean() >= 0.97  # a body on nearly every frame (0.982)
    ious = []
    for clip_id in DFEW_SAMPLES:
        x, ref = store[clip_id], REFERENCE[clip_id]
        both = x["face_mask"] & np.array(ref["face_mask"], bool)
        ious.append(_iou(x["face_boxes"][both], np.array(ref["face_boxes"], np.float32)[both]))
    ious = np.concatenate(ious)
    assert len(ious) >= 100 and ious.mean() >= 0.95 and ious.min() >= 0.8, (ious.mean(), ious.min())
    for clip_id in DFEW_SAMPLES:
        x = store[clip_id]
        found = x["pose"][x["pose_mask"]]  # (n, 33, 4)
        assert ((found[..., 3] >= 0) & (found[..., 3] <= 1)).all()
        # Shoulders lie inside the frame and below the nose in these upright shots.
        nose_y, shoulder_y = found[:, 0, 1], found[:, 11:13, 1].mean(axis=1)
        assert np.median(shoulder_y - nose_y) > 0
        assert (x["pose"][~x["pose_mask"]] == 0).all()


@pytest.mark.parametrize("clip_id", ["1001_DFA_ANG_XX", "1001_DFA_HAP_XX", "bbaf2n"])
def test_flv_and_mpeg1_clips(mixed_store, clip_id):
    _, store, manifest = mixed_store
    row = manifest.loc[clip_id]
    assert row["status"] == "ok" and row["has_audio"] and row["face_rate"] >= 0.9
    assert store[clip_id]["faces"].shape == (T, S, S, 3)


@pytest.mark.parametrize("clip_id, reason", [("zero_bytes", "empty file"), ("truncated", "cannot decode")])
def test_unreadable_files_fail_with_a_reason(mixed_store, clip_id, reason):
    _, store, manifest = mixed_store
    row = manifest.loc[clip_id]
    assert row["status"] == "failed" and reason in row["error"]
    assert clip_id not in store


def test_file_cut_short_keeps_the_decodable_part(mixed_store):
    _, store, manifest = mixed_store
    row = manifest.loc["cut_short"]
    assert row["status"] == "ok" and "truncated" in row["error"] and 0 < row["n_frames"] < 48
    assert store["cut_short"]["frame_index"].max() < row["n_frames"]


def test_gif_falls_back_to_pyav(mixed_store):
    _, store, manifest = mixed_store
    row = manifest.loc["animated"]
    assert row["status"] == "ok" and "pyav" in row["error"] and row["n_frames"] == 12
    x = store["animated"]
    assert x["audio"].shape == (0, N_MELS) and not row["has_audio"]
    # Frame i of the GIF is a plain grey of 20 * i, so luma follows the sampled frame index.
    assert np.allclose(x["luma"], 20 * x["frame_index"], atol=2)


def test_clip_without_audio_track(mixed_store):
    _, store, manifest = mixed_store
    row = manifest.loc["silent_noise"]
    assert row["status"] == "ok" and not row["has_audio"] and "no audio track" in row["error"]
    assert np.isnan(row["audio_rms_db"])
    assert store["silent_noise"]["audio"].shape == (0, N_MELS)


def test_clip_without_face_gets_centre_crop(mixed_store):
    _, store, manifest = mixed_store
    row = manifest.loc["plain_colour"]
    assert row["status"] == "ok" and row["face_rate"] == 0 and "no face" in row["error"]
    assert row["has_audio"] and -15 < row["audio_rms_db"] < -10  # a 0.3-amplitude sine: -13.5 dBFS
    x = store["plain_colour"]
    assert not x["face_mask"].any() and np.isnan(row["face_luma_mean"])
    assert np.allclose(x["face_boxes"][0], [1 / 8, 0, 7 / 8, 1], atol=1e-3)  # centred square of a 4:3 frame
    assert np.abs(x["faces"].reshape(-1, 3).mean(0) - [40, 120, 200]).max() < 8


def test_clip_shorter_than_t_repeats_frames(mixed_store):
    _, store, manifest = mixed_store
    row = manifest.loc["five_frames"]
    assert row["status"] == "ok" and row["n_frames"] == 5 and "short clip" in row["error"]
    x = store["five_frames"]
    assert x["faces"].shape == (T, S, S, 3)
    assert sorted(set(x["frame_index"].tolist())) == [0, 1, 2, 3, 4]


# -- resume, interruption, settings ---------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dfew_mm.cli", "extract", *args]


def test_interrupted_run_resumes(tmp_path, synth_root, assets_dir):
    out = tmp_path / "features"
    args = ["--dfew-root", str(synth_root), "--out", str(out), "--assets-dir", str(assets_dir),
            "--limit", "8", "--no-progress"]
    # Interrupt a run with two worker processes; resume with one (both code paths).
    proc = subprocess.Popen(_cli(*args, "--workers", "2"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "records").glob("*.json"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    store = FeatureStore(out)
    finished = store.ok_ids()
    assert 2 <= len(finished) < 8 and not list(out.rglob("*.tmp"))
    assert sorted(store.manifest["clip_id"]) == sorted(finished)
    stamps = {i: store.clip_path(i).stat().st_mtime_ns for i in finished}

    # A run killed hard leaves a temporary file behind; the next run clears it.
    stale = store.clips_dir / f".{finished[0]}.npz.abc123.tmp"
    stale.write_bytes(b"partial")
    done = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(finished)} already done" in done.stdout
    store = FeatureStore(out)
    assert len(store.ok_ids()) == 8 and not list(out.rglob("*.tmp"))
    assert all(store.clip_path(i).stat().st_mtime_ns == stamps[i] for i in finished)

    # Other settings into the same store are refused.
    assert main(["extract", *args, "--frames", "8"]) == 2


# -- synthetic store shared with the training and evaluation tests --------------------------------
def test_synth_store(synth_store, synth_root):
    store = FeatureStore(synth_store)
    manifest = store.manifest
    assert len(store) == len(list((synth_root / "Clip" / "original").glob("*.mp4")))
    assert (manifest["status"] == "ok").all() and manifest["has_audio"].all()
    assert manifest["face_rate"].mean() >= 0.8
    truth = pd.read_csv(synth_root / "synth_truth.csv")
    dark = set(truth.loc[truth["dark"].astype(bool), "clip_id"].astype(str))
    if dark and len(dark) < len(manifest):
        by_dark = manifest.groupby(manifest["clip_id"].isin(dark))["luma_mean"].mean()
        assert by_dark[True] < by_dark[False]


# -- units: sampling, face track, audio, shards ---------------------------------------------------
def test_sample_indices():
    assert sample_indices(160, 16).tolist() == list(range(5, 160, 10))
    short = sample_indices(3, 16)
    assert short.min() == 0 and short.max() == 2 and np.all(np.diff(short) >= 0)


def test_main_face_ignores_strays_and_bystanders():
    face = np.array([0.40, 0.30, 0.60, 0.60, 0.9], np.float32)
    big_stray = np.array([0.0, 0.0, 0.9, 0.9, 0.5], np.float32)  # one frame only
    bystander = np.array([0.85, 0.1, 0.92, 0.2, 0.55], np.float32)  # small, elsewhere
    detections = [np.stack([face + [0.01 * i, 0, 0.01 * i, 0, 0]]) for i in range(6)]
    detections[2] = np.stack([detections[2][0], big_stray])
    detections[3] = np.zeros((0, 5), np.float32)
    detections[4] = np.stack([bystander])
    boxes, mask, _ = select_main_face(detections)
    assert mask.tolist() == [True, True, True, False, False, True]
    assert np.allclose(boxes[2], face[:4] + [0.02, 0, 0.02, 0])
    filled = fill_and_smooth(boxes, mask, aspect=16 / 9)
    assert np.all(filled[3:5, 0] > 0.41) and np.all(filled[3:5, 0] < 0.46)  # interpolated between 2 and 5


class _FakeDetector:
    """Replays per-frame detections; counts how many frames it was run on."""

    def __init__(self, detections: list[np.ndarray]):
        self.detections, self.calls = detections, 0

    def detect(self, image) -> np.ndarray:
        self.calls += 1
        return self.detections[image.index]


class _FakeImage:
    def __init__(self, index: int):
        self.index, self.width, self.height = index, 640, 360


def test_auto_face_model_runs_the_second_model_only_when_it_can_win():
    t = 8
    images = [_FakeImage(i) for i in range(t)]
    face = np.array([[0.40, 0.30, 0.50, 0.50, 0.9]], np.float32)
    none = np.zeros((0, 5), np.float32)
    bigger = face * [1, 1, 1.04, 1.04, 1]  # the other model's box for the same face

    def run(first: list[np.ndarray], second: list[np.ndarray]):
        short, full = _FakeDetector(first), _FakeDetector(second)
        return track_faces([short, full], images), short.calls, full.calls

    # The first model finds the face in every frame: the second never runs.
    track, _, full_calls = run([face] * t, [bigger] * t)
    assert track.mask.all() and full_calls == 0 and np.allclose(track.boxes[0], face[0, :4], atol=1e-6)
    # It misses a frame and the second model finds all: the second model's track wins.
    track, _, full_calls = run([face] * 7 + [none], [bigger] * t)
    assert track.mask.all() and full_calls == t and np.allclose(track.boxes[0], bigger[0, :4], atol=1e-6)
    # It misses one frame and the second misses two early on: the second stops once it cannot win.
    track, _, full_calls = run([face] * 7 + [none], [none, none] + [bigger] * 6)
    assert track.mask.sum() == 7 and full_calls == 2 and np.allclose(track.boxes[0], face[0, :4], atol=1e-6)


def test_decoded_frames_match_decord_batch(tmp_path):
    """Frames taken one by one through DLPack into a reused buffer equal decord's batch, also for
    rows that are not 16-byte multiples, the repeated indices of a clip shorter than T, and a buffer
    that held a larger clip before."""
    from decord import VideoReader, cpu

    from dfew_mm.extract.decode import FrameBuffer

    buffer = FrameBuffer()
    for n_frames, size in ((40, (854, 482)), (5, (162, 90)), (40, (854, 482))):
        path = _write_video(tmp_path / f"clip_{n_frames}.mp4", n_frames, size=size)
        clip = decode_clip(path, T, buffer)
        expected = VideoReader(str(path), ctx=cpu(0)).get_batch(clip.frame_index.tolist()).asnumpy()
        assert clip.backend == "decord" and len(clip.frames) == T
        assert all(np.array_equal(frame, expected[i]) for i, frame in enumerate(clip.frames))


def test_fbank_matches_ast_feature_extractor():
    from transformers import ASTFeatureExtractor

    rng = np.random.default_rng(0)
    t = np.arange(16_000) / 16_000
    wave = (0.2 * np.sin(2 * np.pi * 300 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ours = log_mel_fbank(wave)
    assert ours.shape == (1 + (16_000 - 400) // 160, N_MELS) and ours.dtype == np.float16
    reference = ASTFeatureExtractor(do_normalize=False, max_length=ours.shape[0])(
        wave, sampling_rate=16_000, return_tensors="np")["input_values"][0]
    assert np.abs(ours.astype(np.float32) - reference).max() < 0.02
    assert log_mel_fbank(np.zeros(100, np.float32)).shape == (0, N_MELS)


def test_shards_cover_every_clip_once(tmp_path):
    clips = {str(i): tmp_path / f"{i}.mp4" for i in range(1, 501)}
    clips.update({f"clip_{c}": tmp_path / f"clip_{c}.mp4" for c in "abcdefgh"})
    shards = [select_clips(clips, shard=(i, 7)) for i in range(7)]
    ids = [clip_id for shard in shards for clip_id, _ in shard]
    assert sorted(ids) == sorted(clips) and len(ids) == len(set(ids))
    assert min(map(len, shards)) > 40  # roughly balanced
    assert all(in_shard(clip_id, 3, 7) for clip_id, _ in shards[3])


def test_dfew_ids_are_integers(tmp_path):
    folder = tmp_path / "Clip" / "original"
    folder.mkdir(parents=True)
    for name in ("00007.mp4", "12.mp4", "notes.txt"):
        (folder / name).write_bytes(b"x")
    clips = list_clips(dfew_root=tmp_path)
    assert sorted(clips) == ["12", "7"]
    assert [i for i, _ in select_clips(clips, ids=["007"], dfew_ids=True)] == ["7"]


# -- model files ---------------------------------------------------------------------------------
@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(assets.ASSETS_ENV, raising=False)
    return tmp_path / "cache" / "dfew_mm" / "mediapipe"


@pytest.fixture
def local_model_server(assets_dir):
    """Serve the local model copies over HTTP, standing in for the MediaPipe bucket."""
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(assets_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _point_at(monkeypatch, key: str, url: str, sha256: str | None) -> None:
    model = assets.MODEL_FILES[key]
    monkeypatch.setitem(assets.MODEL_FILES, key, assets.ModelFile(model.filename, url, sha256))


def test_download_verifies_published_digest(empty_cache, local_model_server, monkeypatch):
    key = "face_detector_short_range"
    model = assets.MODEL_FILES[key]
    _point_at(monkeypatch, key, f"{local_model_server}/{model.filename}", model.sha256)
    path = assets.resolve_model(key)
    assert path == empty_cache / model.filename and assets.sha256_of(path) == model.sha256
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # corrupt the cached copy
    with pytest.raises(AssetError, match="corrupt or was replaced"):
        assets.resolve_model(key)


def test_download_records_digest_on_first_use(empty_cache, local_model_server, monkeypatch):
    key = "pose_landmarker_lite"
    model = assets.MODEL_FILES[key]
    _point_at(monkeypatch, key, f"{local_model_server}/{model.filename}", None)
    path = assets.resolve_model(key)
    record = empty_cache / f"{model.filename}.sha256"
    assert record.read_text().strip() == assets.sha256_of(path)
    path.write_bytes(b"replaced")
    with pytest.raises(AssetError, match="corrupt or was replaced"):
        assets.resolve_model(key)


def test_failed_download_explains_offline_use(empty_cache, monkeypatch):
    _point_at(monkeypatch, "pose_landmarker_full", "http://127.0.0.1:9/pose_landmarker_full.task", None)
    with pytest.raises(AssetError, match="--assets-dir") as info:
        assets.resolve_model("pose_landmarker_full")
    assert "DFEW_MM_ASSETS" in str(info.value) and not list(empty_cache.glob("*"))


def test_assets_dir_and_environment(tmp_path, assets_dir, monkeypatch):
    monkeypatch.setenv(assets.ASSETS_ENV, str(assets_dir))
    assert assets.resolve_model("face_landmarker") == assets_dir / "face_landmarker.task"
    with pytest.raises(AssetError, match="pose_landmarker_full.task"):
        assets.resolve_model("pose_landmarker_full", assets_dir=tmp_path)
    with pytest.raises(AssetError, match="unknown MediaPipe model"):
        assets.resolve_model("hand_landmarker")


def test_blendshapes_option(tmp_path, clips_dir, assets_dir):
    from dfew_mm.extract.options import ExtractOptions
    from dfew_mm.extract.worker import ClipExtractor
    from dfew_mm.extract.worker import STAGES, resolve_models

    options = ExtractOptions(blendshapes=True, frames=4)
    extractor = ClipExtractor(options, resolve_models(options, assets_dir))
    try:
        record, arrays = extractor.extract("sad", clips_dir / "dfew_samples" / "sad.mp4")
    finally:
        extractor.close()
    assert record["status"] == "ok"
    assert set(extractor.stage_s) == set(STAGES) - {"darken"}  # seconds per stage of that clip (no darkening asked)
    scores = arrays["blendshapes"]
    assert scores.shape == (4, 52) and scores.dtype == np.float32
    assert scores[arrays["face_mask"]].max() > 0.1 and (scores >= 0).all() and (scores <= 1).all()


# -- scene-level low light: frames darkened before detection ---------------------------------------
@pytest.fixture(scope="module")
def dark_samples(tmp_path_factory, clips_dir, assets_dir):
    """The seven DFEW samples extracted with --darken 1 (same ids and settings as `mixed_store` otherwise)."""
    root = tmp_path_factory.mktemp("dark")
    folder = root / "videos"
    folder.mkdir()
    for name in DFEW_SAMPLES:
        (folder / f"{name}.mp4").symlink_to(clips_dir / "dfew_samples" / f"{name}.mp4")
    out = root / "features_dark1"
    code = main(["extract", "--clips-dir", str(folder), "--out", str(out), "--darken", "1", "--workers", "2",
                 "--assets-dir", str(assets_dir), "--no-progress"])
    assert code == 0
    return folder, FeatureStore(out)


def test_scene_darkening_makes_detection_fail_on_dfew_samples(mixed_store, dark_samples):
    """Strength 1 against 0 on the real DFEW samples: fewer faces and bodies found, and crops, boxes and
    keypoints that come from detection on the darkened frames (not the lit crops darkened afterwards)."""
    _, lit, lit_manifest = mixed_store
    _, dark = dark_samples
    ids = list(DFEW_SAMPLES)
    before, after = lit_manifest.loc[ids], dark.manifest.set_index("clip_id").loc[ids]
    assert (after["status"] == "ok").all()
    assert after["face_rate"].mean() < before["face_rate"].mean() - 0.1, (before["face_rate"], after["face_rate"])
    assert after["pose_rate"].mean() < before["pose_rate"].mean() - 0.1, (before["pose_rate"], after["pose_rate"])
    assert dark.settings()["darken"] == 1.0 and dark.scene_darken() == 1.0
    assert (after["luma_mean"] < 0.2 * before["luma_mean"]).all()  # the whole frame went dark

    boxes_moved = keypoints_moved = masks_differ = 0
    for clip_id in ids:
        a, b = lit[clip_id], dark[clip_id]
        assert np.array_equal(a["frame_index"], b["frame_index"]) and np.array_equal(a["audio"], b["audio"])
        assert (b["luma"] < 0.2 * a["luma"] + 1).all()
        found = b["face_mask"]
        if found.any():  # crops cut from dark frames
            assert b["faces"][found].mean() < 0.25 * a["faces"][a["face_mask"]].mean() + 2
        both = a["face_mask"] & b["face_mask"]
        boxes_moved += bool(both.any() and np.abs(a["face_boxes"][both] - b["face_boxes"][both]).max() > 1e-3)
        masks_differ += not np.array_equal(a["face_mask"], b["face_mask"])
        bodies = a["pose_mask"] & b["pose_mask"]
        keypoints_moved += bool(bodies.any() and np.abs(a["pose"][bodies] - b["pose"][bodies]).max() > 1e-3)
        assert (b["pose"][~b["pose_mask"]] == 0).all()
    # Detection ran again: where a face is still found its box differs, and some frames lose it.
    assert boxes_moved >= 3 and masks_differ >= 2 and keypoints_moved >= 1


def test_scene_darkening_is_reproducible(clips_dir, assets_dir):
    from dfew_mm.extract.options import ExtractOptions
    from dfew_mm.extract.worker import ClipExtractor, resolve_models

    path = clips_dir / "dfew_samples" / "disgust.mp4"
    runs = {}
    for seed in (0, 0, 1):
        options = ExtractOptions(frames=4, darken=0.5, darken_seed=seed)
        extractor = ClipExtractor(options, resolve_models(options, assets_dir))
        try:
            runs.setdefault(seed, []).append(extractor.extract("disgust", path)[1])
        finally:
            extractor.close()
    (a, b), (c,) = runs[0], runs[1]
    for name in ("faces", "face_boxes", "face_mask", "pose", "luma"):
        assert np.array_equal(a[name], b[name]), name
    assert not np.array_equal(a["faces"], c["faces"]) and not np.array_equal(a["luma"], c["luma"])


def test_darkening_settings_and_bad_input(dark_samples, assets_dir, tmp_path, capsys):
    folder, dark = dark_samples
    args = ["extract", "--clips-dir", str(folder), "--assets-dir", str(assets_dir), "--no-progress"]
    # A store darkened once is not darkened again, nor mixed with another strength or with lit clips.
    for strength in ("0.5", "0"):
        capsys.readouterr()
        assert main([*args, "--out", str(dark.path), "--darken", strength]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "darken: store 1.0 vs now" in err and "its own store" in err, err
    for bad in ("1.5", "-0.25", "nan"):
        assert main([*args, "--out", str(tmp_path / "x"), "--darken", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: --darken {float(bad):g}: must be 0..1", err
    assert main([*args, "--out", str(tmp_path / "x"), "--split", "test"]) == 2
    assert "--split and --fold go together" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "x"), "--split", "test", "--fold", "1"]) == 2
    assert "--splits-dir" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_stores_without_darkening_settings_resume(tmp_path):
    """extract_settings.json written before --darken existed means an undarkened store."""
    import json

    from dfew_mm.extract.options import ExtractOptions
    from dfew_mm.extract.run import check_settings
    from dfew_mm.errors import StoreError

    store = FeatureStore.__new__(FeatureStore)
    store.path = tmp_path
    old = {k: v for k, v in ExtractOptions().to_dict().items() if not k.startswith("darken")}
    old["store_format"] = 2  # the darkening keys alone are absent (format 1 is tests/test_waveform_store.py's)
    old["extractor_version"] = 2
    (tmp_path / "extract_settings.json").write_text(json.dumps(old))
    check_settings(store, ExtractOptions(), overwrite=False)
    assert json.loads((tmp_path / "extract_settings.json").read_text())["darken"] == 0.0
    with pytest.raises(StoreError, match="darken: store 0.0 vs now 0.25"):
        check_settings(store, ExtractOptions(darken=0.25), overwrite=False)


def test_split_selection(tmp_path, splits_dir):
    from dfew_mm.extract.run import split_clip_ids

    test_ids = split_clip_ids(1, "test", splits_dir=splits_dir)
    train_ids = split_clip_ids(1, "train", splits_dir=splits_dir)
    assert len(test_ids) == 2341 and not set(test_ids) & set(train_ids)
    # a folder of videos named by DFEW number, zero-padded or not; three of fold 1's test clips, one training clip
    names = [f"{int(test_ids[0]):05d}", test_ids[1], test_ids[2], train_ids[0]]
    clips = {name: tmp_path / f"{name}.mp4" for name in names}
    chosen = [i for i, _ in select_clips(clips, split_ids=test_ids)]
    assert chosen == names[:3]
    assert [i for i, _ in select_clips(clips, split_ids=test_ids, limit=2)] == names[:2]
    assert [i for i, _ in select_clips(clips, ids=[names[1], names[3]], split_ids=test_ids)] == [names[1]]
    sharded = [i for k in range(2) for i, _ in select_clips(clips, split_ids=test_ids, shard=(k, 2))]
    assert sorted(sharded) == sorted(chosen)
