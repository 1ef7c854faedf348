"""Evaluation: the low-light perturbation, the predictions file and its metrics, prediction on new clips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfew_mm.datasets.dfew import CLASSES
from dfew_mm.errors import ConfigError, StoreError
from dfew_mm.evaluate import (PREDICTION_COLUMNS, PROB_COLUMNS, QUALITY_COLUMNS, RELIANCE_COLUMNS, Darken, darken,
                              evaluate, metrics_path_for, parse_darken, parse_modalities)
from dfew_mm.metrics import classification_metrics


def _faces(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 230, (4, 32, 32, 3), dtype=np.uint8)  # (T, S, S, 3)


def test_darken_strength_zero_is_identity_and_darkening_grows_with_strength():
    faces = _faces()
    assert np.array_equal(darken(faces, 0.0, np.random.default_rng(0)), faces)
    means = [darken(faces, s, np.random.default_rng(0)).mean() for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(a > b for a, b in zip(means, means[1:])), means
    dark = darken(faces, 1.0, np.random.default_rng(0))
    assert dark.dtype == np.uint8 and dark.shape == faces.shape
    assert dark.mean() < 0.15 * faces.mean()
    # sensor noise: a flat patch is no longer flat, and the same seed gives the same noise
    flat = np.full((2, 16, 16, 3), 150, np.uint8)
    assert darken(flat, 0.7, np.random.default_rng(1)).std() > 1.0
    assert np.array_equal(Darken(0.7)(flat, np.random.default_rng(1)), darken(flat, 0.7, np.random.default_rng(1)))


def test_darken_rejects_bad_input():
    with pytest.raises(ValueError, match="between 0 and 1"):
        darken(_faces(), 1.5, np.random.default_rng(0))
    with pytest.raises(TypeError, match="uint8"):
        darken(_faces().astype(np.float32), 0.5, np.random.default_rng(0))


def test_parse_darken_and_modalities():
    assert parse_darken("0.5") == [0.5]
    assert parse_darken("0.5,0,0.25") == [0.0, 0.25, 0.5]
    assert parse_darken("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_darken(None) == [0.0]
    for bad in ("2", "-0.1", "dark", "0:1:0"):
        with pytest.raises(ConfigError, match="--darken"):
            parse_darken(bad)
    trained = ["video", "pose", "audio"]
    assert parse_modalities("pose+video", trained) == ["video", "pose"]
    assert parse_modalities(None, trained) == trained
    with pytest.raises(ConfigError, match="valid modalities"):
        parse_modalities("video+smell", trained)
    with pytest.raises(ConfigError, match="trained with video"):
        parse_modalities("video+audio", ["video"])


def test_darkening_changes_face_frames_only(trained_run):
    from dfew_mm.checkpoint import load_checkpoint
    from dfew_mm.data.dataset import ClipDataset
    from dfew_mm.data.store import FeatureStore

    store = FeatureStore(trained_run["store"])
    ids = store.ok_ids()[:3]
    cfg = load_checkpoint(trained_run["run"] / "best.pt")[1].data
    kwargs = dict(modalities=["video", "pose", "audio"], train=False)
    plain = ClipDataset(store, ids, [0] * len(ids), cfg, **kwargs)
    dark = ClipDataset(store, ids, [0] * len(ids), cfg, transforms={"faces": Darken(0.8)}, **kwargs)
    for i in range(len(ids)):
        a, b = plain[i], dark[i]
        assert not np.array_equal(a["video"].numpy(), b["video"].numpy())
        assert b["video"].float().mean() < a["video"].float().mean()
        for key in ("video_mask", "pose", "pose_mask", "audio", "audio_mask", "frame_time"):
            assert np.array_equal(a[key].numpy(), b[key].numpy()), key
        assert a["label"] == b["label"] and a["clip_id"] == b["clip_id"]


def test_evaluate_writes_documented_columns_and_consistent_metrics(trained_run, tmp_path):
    out_csv = tmp_path / "preds.csv"
    result = evaluate(trained_run["run"] / "best.pt", trained_run["store"], modalities="video+audio",
                      darken="0,1", out_csv=out_csv)
    frame = pd.read_csv(out_csv, dtype={"clip_id": str})
    assert list(frame.columns) == list(PREDICTION_COLUMNS)
    assert set(frame["perturbation"]) == {"none", "darken:1"}
    assert (frame["modalities"] == "video+audio").all()
    assert (frame["trained_modalities"] == "video+audio").all()
    n_clips = frame["clip_id"].nunique()
    assert len(frame) == 2 * n_clips and n_clips == result["passes"][0]["n"] == 6  # fold 1's test clips

    probs = frame[list(PROB_COLUMNS)].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (frame["pred"] == probs.argmax(axis=1)).all()
    assert (frame["correct"] == (frame["pred"] == frame["label"]).astype(int)).all()
    assert (frame["label_name"] == [CLASSES[i] for i in frame["label"]]).all()

    manifest = pd.read_csv(trained_run["store"] / "manifest.csv", dtype={"clip_id": str}).set_index("clip_id")
    joined = manifest.loc[frame["clip_id"], list(QUALITY_COLUMNS)].reset_index(drop=True)
    pd.testing.assert_frame_equal(frame[list(QUALITY_COLUMNS)], joined, check_dtype=False)

    saved = json.loads(metrics_path_for(out_csv).read_text())
    assert saved == json.loads(json.dumps(saved))  # strict JSON
    assert saved["intervals"]["n_boot"] == 2000 and saved["intervals"]["level"] == 0.95
    for p in saved["passes"]:
        assert p["uar_ci"][0] <= p["uar"] <= p["uar_ci"][1] and p["war_ci"][0] <= p["war"] <= p["war_ci"][1]
        rows = frame[frame["perturbation"] == p["perturbation"]]
        expected = classification_metrics(rows["label"], rows["pred"])
        assert p["uar"] == pytest.approx(expected["uar"]) and p["war"] == pytest.approx(rows["correct"].mean())
        assert p["confusion"] == expected["confusion"]
        for name, r in expected["per_class_recall"].items():
            assert (p["per_class_recall"][name] is None) if math.isnan(r) else p["per_class_recall"][name] == pytest.approx(r)


def test_evaluate_reproduces_the_training_runs_test_metrics(trained_run, tmp_path):
    """One inference loop: `evaluate` on best.pt gives the numbers training wrote for its test fold."""
    run = trained_run["run"]
    saved = json.loads((run / "test_metrics.json").read_text())["best"]
    result = evaluate(run / "best.pt", trained_run["store"], out_csv=tmp_path / "best.csv")
    (ours,) = result["passes"]
    for key in ("uar", "war", "macro_f1"):
        assert round(ours[key], 4) == round(saved[key], 4), key
    assert ours["confusion"] == saved["confusion"] and ours["n"] == saved["n"]
    # training also wrote the per-clip predictions of both checkpoints in the same file format
    written = pd.read_csv(run / "test_predictions.csv", dtype={"clip_id": str})
    best = written[written["checkpoint"] == "best"].reset_index(drop=True)
    ours_frame = pd.read_csv(tmp_path / "best.csv", dtype={"clip_id": str})
    assert list(written.columns) == [*PREDICTION_COLUMNS, "checkpoint"]
    assert set(written["checkpoint"]) == {"best", "last"}
    assert best["clip_id"].tolist() == ours_frame["clip_id"].tolist()
    assert np.allclose(best[list(PROB_COLUMNS)].to_numpy(), ours_frame[list(PROB_COLUMNS)].to_numpy(), atol=1e-5)


def test_evaluate_cli_rejects_modalities_the_model_lacks(trained_run, tmp_path, capsys):
    from dfew_mm.cli import main

    code = main(["evaluate", "--checkpoint", str(trained_run["run"] / "best.pt"), "--store",
                 str(trained_run["store"]), "--modalities", "video+pose", "--out", str(tmp_path / "x.csv")])
    assert code == 2 and "cannot use ['pose']" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_attribution_adds_leave_one_modality_out_reliance(trained_run, tmp_path):
    run, store = trained_run["run"], trained_run["store"]
    result = evaluate(run / "best.pt", store, darken="0,1", out_csv=tmp_path / "all.csv", attribution=True)
    frame = pd.read_csv(tmp_path / "all.csv", dtype={"clip_id": str})
    assert list(frame.columns) == [*PREDICTION_COLUMNS, *RELIANCE_COLUMNS]
    assert frame["reliance_pose"].isna().all()  # the model has no pose: empty, not 0
    # reliance = p(pred | video+audio) - p(pred | the other one alone), clip by clip and pass by pass
    for masked, kept in (("video", "audio"), ("audio", "video")):
        evaluate(run / "best.pt", store, modalities=kept, darken="0,1", out_csv=tmp_path / f"{kept}.csv")
        alone = pd.read_csv(tmp_path / f"{kept}.csv", dtype={"clip_id": str})
        rows = np.arange(len(frame))
        pred = frame["pred"].to_numpy()
        expected = (frame[list(PROB_COLUMNS)].to_numpy()[rows, pred] - alone[list(PROB_COLUMNS)].to_numpy()[rows, pred])
        assert np.allclose(frame[f"reliance_{masked}"], expected, atol=1e-6)
    assert set(result["passes"][0]["mean_reliance"]) == {"video", "audio"} and result["attribution"]


def test_attribution_needs_two_modalities(trained_run, tmp_path, capsys):
    from dfew_mm.cli import main

    code = main(["evaluate", "--checkpoint", str(trained_run["run"] / "best.pt"), "--store",
                 str(trained_run["store"]), "--modalities", "video", "--attribution", "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs at least two" in err and "only video" in err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.slow
def test_predict_real_clip_and_unreadable_file(trained_run, clips_dir, assets_dir, tmp_path, capsys):
    from dfew_mm.cli import main

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    clip = clips_dir / "dfew_samples" / "happy.mp4"
    checkpoint = trained_run["run"] / "best.pt"
    code = main(["predict", str(clip), str(broken), str(tmp_path / "missing.mp4"), "--checkpoint", str(checkpoint),
                 "--json", "--assets-dir", str(assets_dir)])
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert code == 1 and "2 of 3 clips could not be read" in captured.err
    good, bad, missing = results
    assert good["ok"] and good["clip"] == str(clip)
    assert [t["emotion"] for t in good["top"]][0] == max(good["probs"], key=good["probs"].get)
    assert sum(good["probs"].values()) == pytest.approx(1.0, abs=1e-3)
    assert good["quality"]["face_rate"] > 0  # a real face was found and used
    assert not bad["ok"] and "broken.mp4" in bad["error"]
    assert not missing["ok"] and "does not exist" in missing["error"]


# -- scene-darkened stores ---------------------------------------------------------------------------
def _scene_store(trained_run, tmp_path, strength: float = 0.5, **settings) -> Path:
    """A copy of the training store standing for one extracted with --darken `strength`."""
    import shutil

    from dfew_mm.extract.options import ExtractOptions

    store = tmp_path / f"dark{strength:g}"
    shutil.copytree(trained_run["store"], store)
    options = ExtractOptions(frames=6, face_size=32, darken=strength, **settings).to_dict()
    (store / "extract_settings.json").write_text(json.dumps(options))
    return store


def test_evaluate_labels_scene_darkened_stores(trained_run, tmp_path):
    from dfew_mm.predictions import DARKEN_KINDS

    store = _scene_store(trained_run, tmp_path, 0.5)
    out_csv = tmp_path / "scene.csv"
    result = evaluate(trained_run["run"] / "best.pt", store, out_csv=out_csv)
    frame = pd.read_csv(out_csv, dtype={"clip_id": str})
    assert list(frame.columns) == list(PREDICTION_COLUMNS)
    assert set(zip(frame["perturbation"], frame["darken"], frame["darken_kind"])) == {("scene:0.5", 0.5, "scene")}
    assert result["scene_darken"] == 0.5 and [p["darken_kind"] for p in result["passes"]] == ["scene"]
    assert json.loads(metrics_path_for(out_csv).read_text())["passes"][0]["perturbation"] == "scene:0.5"
    # crop-level passes on the original store keep their labels
    evaluate(trained_run["run"] / "best.pt", trained_run["store"], darken="0,0.5", out_csv=tmp_path / "crop.csv")
    crop = pd.read_csv(tmp_path / "crop.csv")
    assert set(zip(crop["perturbation"], crop["darken_kind"])) == {("none", "none"), ("darken:0.5", "crop")}
    assert set(frame["darken_kind"]) | set(crop["darken_kind"]) == set(DARKEN_KINDS)


def test_darkening_a_scene_darkened_store_again_is_refused(trained_run, tmp_path, capsys):
    from dfew_mm.cli import main

    store = _scene_store(trained_run, tmp_path, 1.0)
    out = tmp_path / "twice.csv"
    code = main(["evaluate", "--checkpoint", str(trained_run["run"] / "best.pt"), "--store", str(store),
                 "--darken", "0,0.5", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "darkened at extraction (scene level, --darken 1" in err and "a second time" in err
    assert not out.exists()


def test_a_store_that_lacks_what_the_model_reads_stops_before_predicting(trained_run, tmp_path, capsys):
    from _train_stores import make_store
    from dfew_mm.cli import main

    _, small = make_store(tmp_path / "small", clips=30, frames=6, face=16, audio=110)  # 16 px faces, model: 32
    (small / "extract_settings.json").write_text(json.dumps({"frames": 6, "face_size": 16, "darken": 0.5}))
    out = tmp_path / "small.csv"
    code = main(["evaluate", "--checkpoint", str(trained_run["run"] / "best.pt"), "--store", str(small),
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "faces of 16 px where the model reads 32 px" in err and "--face-size 32 --darken 0.5" in err
    assert not out.exists()


def test_store_gaps_against_the_training_store(trained_run, tmp_path):
    """A model trained on a store with blendshapes and 6 frames; a darkened store without them, at 8."""
    import dataclasses

    import numpy as np

    from dfew_mm.checkpoint import load_checkpoint
    from dfew_mm.data.store import FeatureStore
    from dfew_mm.evaluate import store_gaps

    cfg = load_checkpoint(trained_run["run"] / "best.pt")[1]
    training = _scene_store(trained_run, tmp_path / "a", 0.0, blendshapes=True)
    for path in (training / "clips").glob("*.npz"):  # the training store's clips hold blendshapes
        arrays = dict(np.load(path))
        np.savez(path, **arrays, blendshapes=np.zeros((6, 52), np.float32))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, store=str(training)))
    dark = _scene_store(trained_run, tmp_path / "b", 0.5)
    settings = json.loads((dark / "extract_settings.json").read_text())
    (dark / "extract_settings.json").write_text(json.dumps({**settings, "frames": 8}))
    store = FeatureStore(dark)
    problems, flags = store_gaps(cfg, store, store.ok_ids()[0], ["video", "audio"])
    text = "; ".join(problems)
    assert "no blendshapes array" in text and "frames 8 where the training store" in text, text
    assert set(flags) == {"--blendshapes", "--frames 6"}
    # a darkened copy of the training store (same settings and arrays otherwise): nothing lacks
    import shutil

    same = shutil.copytree(training, tmp_path / "c")
    settings = json.loads((same / "extract_settings.json").read_text())
    (same / "extract_settings.json").write_text(json.dumps({**settings, "darken": 0.75, "darken_seed": 3}))
    assert store_gaps(cfg, FeatureStore(same), "1", ["video", "audio"]) == ([], [])


def test_predict_never_darkens_new_clips(trained_run, tmp_path):
    """A model evaluated (or trained) on a scene-darkened store predicts real clips as they are."""
    import dataclasses

    from dfew_mm.checkpoint import load_checkpoint
    from dfew_mm.predict import extraction_options

    cfg = load_checkpoint(trained_run["run"] / "best.pt")[1]
    store = _scene_store(trained_run, tmp_path, 0.75)
    options = extraction_options(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, store=str(store))))
    assert options.darken == 0.0 and (options.frames, options.face_size) == (6, 32)


def test_a_darkened_store_of_the_test_split_alone(trained_run, tmp_path):
    """The DFEW recipe darkens only the fold's test clips (`extract --split test --fold 1`)."""
    store = _scene_store(trained_run, tmp_path, 1.0)
    test_ids = {str(i) for i in range(5, 31, 5)}  # fold 1's test clips in the random-array store
    for path in [*(store / "clips").glob("*.npz"), *(store / "records").glob("*.json")]:
        if path.stem not in test_ids:
            path.unlink()
    out_csv = tmp_path / "scene_test.csv"
    result = evaluate(trained_run["run"] / "best.pt", store, out_csv=out_csv)
    frame = pd.read_csv(out_csv, dtype={"clip_id": str})
    assert set(frame["clip_id"]) == test_ids and set(frame["perturbation"]) == {"scene:1"}
    assert result["passes"][0]["n"] == 6
    with pytest.raises(StoreError, match="train clips of fold 1 are not usable"):
        evaluate(trained_run["run"] / "best.pt", store, split="val", out_csv=tmp_path / "val.csv")
