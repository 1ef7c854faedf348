"""The synthetic DFEW generator: real containers, audio, detectable faces, class cues, low light."""

from __future__ import annotations

import decord
import librosa
import mediapipe as mp
import numpy as np
import pandas as pd
import pytest
from mediapipe.tasks import python as mp_tasks
from mediapipe.tasks.python import vision

from dfew_mm.constants import LUMA_WEIGHTS
from dfew_mm.datasets.dfew import CLASSES, CLIP_DIR, load_folds
from dfew_mm.synth import SynthConfig, generate_dataset, plan_clips, render_audio, render_frames


def _truth(root):
    return pd.read_csv(root / "synth_truth.csv")


def test_layout_and_folds(synth_root):
    truth = _truth(synth_root)
    folds = load_folds(dfew_root=synth_root)
    for fold in folds:
        assert len(fold.train) + len(fold.test) == len(truth)
        assert len(fold.test) > 0
    tested = sorted(set().union(*(set(f.test.index) for f in folds)))
    assert tested == sorted(truth["clip_id"])  # every clip is tested in exactly one fold
    assert sorted(truth["label"].value_counts()) == [5] * len(CLASSES)  # balanced classes
    assert truth["dark"].sum() == round(0.3 * len(truth))


def test_clips_are_h264_with_aac_audio(synth_root):
    for path in sorted((synth_root / CLIP_DIR).glob("*.mp4"))[:5]:
        video = decord.VideoReader(str(path))
        assert len(video) == 48 and video[0].shape == (288, 384, 3)
        audio = decord.AudioReader(str(path), sample_rate=16_000, mono=True)
        samples = audio[:].asnumpy()
        assert samples.shape[1] > 16_000 * 1.8 and np.abs(samples).max() > 0.01


def test_mediapipe_finds_the_faces(synth_root, assets_dir):
    options = vision.FaceDetectorOptions(
        base_options=mp_tasks.BaseOptions(model_asset_path=str(assets_dir / "face_detector_full_range.tflite")))
    found = []
    with vision.FaceDetector.create_from_options(options) as detector:
        for path in sorted((synth_root / CLIP_DIR).glob("*.mp4")):
            video = decord.VideoReader(str(path))
            for index in (0, len(video) // 2, len(video) - 1):
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=video[index].asnumpy())
                found.append(len(detector.detect(image).detections) > 0)
    assert np.mean(found) >= 0.9


def test_low_light_clips_are_dark(synth_root):
    truth = _truth(synth_root)
    luma = {}
    for row in truth.itertuples():
        frame = decord.VideoReader(str(synth_root / CLIP_DIR / f"{row.clip_id:05d}.mp4"))[10].asnumpy()
        luma[row.clip_id] = float((frame @ np.array(LUMA_WEIGHTS)).mean())
    dark = [luma[i] for i in truth.loc[truth["dark"], "clip_id"]]
    bright = [luma[i] for i in truth.loc[~truth["dark"], "clip_id"]]
    assert max(dark) < 45 < min(bright) or np.mean(dark) < 0.35 * np.mean(bright)


def test_audio_pitch_follows_class():
    cfg = SynthConfig(clips=7, confusion=0.0)
    specs = {CLASSES[s.label]: s for s in plan_clips(cfg)}
    pitch = {}
    for name in ("happy", "sad", "surprise"):
        signal = render_audio(specs[name], cfg)[0]
        f0 = librosa.yin(signal, fmin=80, fmax=600, sr=44_100, frame_length=4096, hop_length=1024)
        energy = librosa.feature.rms(y=signal, frame_length=4096, hop_length=1024)[0]
        pitch[name] = np.median(f0[energy > 0.5 * energy.max()])  # voiced part of each syllable
    assert pitch["sad"] < pitch["happy"] < pitch["surprise"] * 1.2
    assert pitch["sad"] < 0.7 * pitch["happy"]


def test_deterministic(tmp_path):
    cfg = SynthConfig(clips=3, seed=11, seconds=0.5)
    first = render_frames(plan_clips(cfg)[0], cfg)
    assert np.array_equal(first, render_frames(plan_clips(cfg)[0], cfg))
    generate_dataset(tmp_path / "a", cfg)
    generate_dataset(tmp_path / "b", cfg)
    assert _truth(tmp_path / "a").equals(_truth(tmp_path / "b"))
    for name in ("00001.mp4", "00003.mp4"):
        a = decord.VideoReader(str(tmp_path / "a" / CLIP_DIR / name))
        b = decord.VideoReader(str(tmp_path / "b" / CLIP_DIR / name))
        assert np.array_equal(a[5].asnumpy(), b[5].asnumpy())


@pytest.mark.parametrize("clips", [1, 7])
def test_tiny_datasets(tmp_path, clips):
    summary = generate_dataset(tmp_path, SynthConfig(clips=clips, seconds=0.5))
    assert summary["clips"] == clips
    assert len(list((tmp_path / CLIP_DIR).glob("*.mp4"))) == clips


def test_cues_choose_the_modalities_that_carry_the_label():
    specs = plan_clips(SynthConfig(clips=700, cues=("audio",)))
    agree = {m: np.mean([getattr(s, f"{m}_class") == s.label for s in specs]) for m in ("face", "pose", "audio")}
    assert agree["audio"] > 0.8  # the cue, up to the confusion share
    assert agree["face"] < 0.25 and agree["pose"] < 0.25  # independent of the label: about 1/7
    assert SynthConfig(cues="pose, face").cues == ("face", "pose")  # any order, canonical order kept
    default = plan_clips(SynthConfig(clips=50, seed=4))  # the default draws exactly what it drew before cues existed
    assert default == plan_clips(SynthConfig(clips=50, seed=4, cues=("face", "pose", "audio")))


def test_unknown_cue_lists_the_valid_names(tmp_path):
    from dfew_mm.cli import main
    from dfew_mm.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown cue voice: valid cues are face, pose, audio"):
        SynthConfig(cues=("face", "voice"))
    assert main(["synth", "--out", str(tmp_path / "s"), "--clips", "1", "--cues", "voice"]) == 2
    assert not (tmp_path / "s").exists()
