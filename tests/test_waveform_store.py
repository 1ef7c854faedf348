"""Store format 2: clip files hold the 16 kHz waveform (int16) that waveform speech encoders read;
a format-1 store is refused with the command that adds it, and that command adds it without
redoing faces and pose. On real CREMA-D clips (they have a soundtrack)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _clips import cremad_folder
from _train_stores import SMALL, make_store
from dfew_mm.cli import main
from dfew_mm.config import load_config
from dfew_mm.constants import HOP_SAMPLES, WAVEFORM_ARRAY
from dfew_mm.data.dataset import ClipDataset
from dfew_mm.data.store import SETTINGS_FILE, STORE_FORMAT, FeatureStore
from dfew_mm.models.encoders import store_fit_problems
from dfew_mm.models.encoders.audio import crop_waveform, reads_waveform

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLIPS = ("1001_DFA_ANG_XX", "1001_DFA_HAP_XX")
WAVLM_TINY = ["model.audio.arch=hf/microsoft/wavlm-base-plus", "model.audio.pretrained=false"]


def test_crop_waveform_follows_the_filterbank_window():
    samples = np.arange(5000, dtype=np.int16)
    wave, mask = crop_waveform(samples, start_frame=10, n_frames=20)  # frames 10..29: samples 1600..4799
    assert wave.shape == mask.shape == (20 * HOP_SAMPLES,) and mask.all()
    assert wave[0] * 32768 == 1600 and wave[-1] * 32768 == 4799
    wave, mask = crop_waveform(samples, start_frame=25, n_frames=10)  # runs past the end: zero-padded
    assert mask.sum() == 1000 and (wave[~mask] == 0).all()


@pytest.fixture
def store_of_two(tmp_path, clips_dir, assets_dir):
    folder = cremad_folder(tmp_path / "videos", clips_dir, CLIPS)
    out = tmp_path / "features"
    assert main(["extract", "--clips-dir", str(folder), "--out", str(out), "--frames", "4",
                 "--assets-dir", str(assets_dir), "--no-progress"]) == 0
    return folder, out


def _make_format_1(store: FeatureStore) -> dict:
    """What a store written before the waveform existed looks like; returns the removed arrays."""
    removed = {}
    for clip_id in store.ok_ids():
        arrays = dict(store[clip_id])
        removed[clip_id] = arrays.pop(WAVEFORM_ARRAY)
        size = store.write_clip(clip_id, arrays)
        store.write_record({**store.read_record(clip_id), "npz_bytes": size})
    settings = store.settings()
    del settings["store_format"]
    store.settings_path.write_text(json.dumps(settings))
    return removed


def test_extraction_stores_the_waveform_and_old_stores_get_it_added(store_of_two, assets_dir, capsys):
    folder, out = store_of_two
    store = FeatureStore(out)
    assert store.settings()["store_format"] == STORE_FORMAT == 2
    for clip_id in CLIPS:
        clip = store[clip_id]
        wave, fbank = clip[WAVEFORM_ARRAY], clip["audio"]
        assert wave.dtype == np.int16 and np.abs(wave).max() > 1000  # a real soundtrack, in int16 units
        assert len(fbank) == 1 + (len(wave) - 400) // HOP_SAMPLES  # the filterbank of those samples

    # a waveform encoder reads it, aligned with the filterbank crop (no augmentation: its gain would scale it)
    cfg = load_config("tiny", [*WAVLM_TINY, "data.frames=4", "data.face_size=112", "data.audio_frames=100",
                               "model.audio.max_length=100", "data.augment=false"])
    assert reads_waveform(cfg.model.audio) and not store_fit_problems(cfg.model, 112, store.array_shapes(CLIPS[0]))
    sample = ClipDataset(store, [CLIPS[1]], [0], cfg.data, ["audio"], train=True, model_cfg=cfg.model)[0]
    start = round(sample["audio_start"] * 100)
    expected = store[CLIPS[1]][WAVEFORM_ARRAY][start * HOP_SAMPLES:(start + 100) * HOP_SAMPLES] / 32768
    assert sample["waveform"].shape == (100 * HOP_SAMPLES,)
    assert np.allclose(sample["waveform"].numpy()[:len(expected)], expected)

    removed = _make_format_1(store)
    # a format-1 store: training a waveform encoder and resuming the extraction both name the fix
    problems = store_fit_problems(cfg.model, 112, store.array_shapes(CLIPS[0]))
    assert len(problems) == 1 and "--add-waveform" in problems[0]
    capsys.readouterr()
    assert main(["extract", "--clips-dir", str(folder), "--out", str(out), "--frames", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "store_format: store 1 vs now 2" in err and f"--add-waveform --out {out}" in err

    stamps = {c: store.clip_path(c).stat().st_mtime_ns for c in CLIPS}
    faces = {c: store[c]["faces"] for c in CLIPS}
    assert main(["extract", "--add-waveform", "--clips-dir", str(folder), "--out", str(out), "--no-progress"]) == 0
    assert "waveform added to 2 clips (0 had it)" in capsys.readouterr().out
    store = FeatureStore(out)
    assert store.settings()["store_format"] == 2 and not any(store.clip_problems(CLIPS).values())
    for clip_id in CLIPS:
        assert store.clip_path(clip_id).stat().st_mtime_ns != stamps[clip_id]
        assert np.array_equal(store[clip_id][WAVEFORM_ARRAY], removed[clip_id])
        assert np.array_equal(store[clip_id]["faces"], faces[clip_id])  # faces and pose kept as they were
    # resumable and idempotent; extraction into the store works again
    assert main(["extract", "--add-waveform", "--clips-dir", str(folder), "--out", str(out), "--no-progress"]) == 0
    assert "waveform added to 0 clips (2 had it)" in capsys.readouterr().out
    assert main(["extract", "--clips-dir", str(folder), "--out", str(out), "--frames", "4", "--no-progress",
                 "--assets-dir", str(assets_dir)]) == 0
    assert "0 ok, 0 failed, 2 already done" in capsys.readouterr().out


def test_add_waveform_needs_the_videos_of_the_store(store_of_two, tmp_path, capsys):
    _, out = store_of_two
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "unrelated.mp4").write_bytes(b"")
    assert main(["extract", "--add-waveform", "--clips-dir", str(other), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "2 extracted clips" in err and "have no video among the clips given" in err


def test_training_a_waveform_encoder_end_to_end(tmp_path):
    """A tiny WavLM (random weights) trains on the store's waveform through dataset, batch and encoder."""
    dfew, store = make_store(tmp_path, clips=20, frames=4, face=32, audio=100)
    tiny = ["model.audio.arch_kwargs.hidden_size=32", "model.audio.arch_kwargs.num_hidden_layers=1",
            "model.audio.arch_kwargs.num_attention_heads=2", "model.audio.arch_kwargs.intermediate_size=64",
            "model.audio.arch_kwargs.conv_dim=[32,32]", "model.audio.arch_kwargs.conv_kernel=[20,20]",
            "model.audio.arch_kwargs.conv_stride=[16,20]", "model.audio.arch_kwargs.num_conv_pos_embeddings=16",
            "model.audio.arch_kwargs.num_conv_pos_embedding_groups=2", "model.audio.arch_kwargs.num_buckets=16",
            "model.audio.arch_kwargs.max_bucket_distance=32"]
    assert main(["train", "--config", "tiny", "--store", str(store), "--dfew-root", str(dfew), "--out",
                 str(tmp_path / "run"), "--modalities", "audio", "--no-progress", *SMALL, *WAVLM_TINY, *tiny,
                 "train.epochs=1", "data.num_workers=0"]) == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert 0.0 <= metrics["best"]["uar"] <= 1.0
