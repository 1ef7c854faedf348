"""Datasets beside DFEW: MAFW's and FERV39k's layouts and split files, bad input naming file and line, synthetic
copies of each layout, each dataset end to end, a dataset defined outside the library, old DFEW checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from _train_stores import SMALL, random_clip
from dfew_mm.cli import main
from dfew_mm.config import load_config
from dfew_mm.data.store import MANIFEST_COLUMNS, FeatureStore
from dfew_mm.datasets import DATASETS, get_dataset, open_dataset, registered
from dfew_mm.datasets.base import Dataset, SynthClip, class_indices, clip_ids, read_fields, split_frame
from dfew_mm.datasets.dfew import CLASSES as DFEW_CLASSES, read_split_csv
from dfew_mm.errors import ConfigError, DatasetError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAFW = get_dataset("mafw")
FERV = get_dataset("ferv39k")
# 4 frames of 48 px faces and 1 s of audio, as the demo: the synthetic cues hold still within a clip
SHORT = ["--frames", "4", "--face-size", "48", "--no-progress"]
TINY_RUN = ["data.frames=4", "data.face_size=48", "data.audio_frames=100", "model.audio.max_length=112",
            "train.epochs=2", "train.batch_size=8", "train.device=cpu", "data.num_workers=0"]


# -- split files ---------------------------------------------------------------------------------------
def _error_line(err: str) -> str:
    """The one `error:` line of a failed command's stderr (log lines aside)."""
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line and " WARNING " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _mafw_splits(root: Path, train: str, test: str, folds=range(1, 6), folder="Train & Test Set") -> Path:
    for k in folds:
        base = root / folder / "single" / "no_caption" / f"set_{k}"
        base.mkdir(parents=True, exist_ok=True)
        (base / "train.txt").write_text(train)
        (base / "test.txt").write_text(test)
    return root


def test_mafw_split_files_ids_and_classes(tmp_path):
    root = _mafw_splits(tmp_path, "00025.mp4 anger\n00108.mp4 Disappointment\n\n7.mp4 contempt\n", "00003.mp4 fear\n")
    fold = open_dataset("mafw", root).fold(3)
    assert list(fold.train.index) == ["25", "108", "7"] and list(fold.test.index) == ["3"]  # store ids
    assert [MAFW.classes[i] for i in fold.train["label"]] == ["anger", "disappointment", "contempt"]
    assert len(MAFW.classes) == 11 and MAFW.folds == (1, 2, 3, 4, 5)
    other = _mafw_splits(tmp_path / "renamed", "1.mp4 anger\n", "2.mp4 fear\n", folder="split")  # MAE-DFER's name
    assert list(open_dataset("mafw", other).fold(1).test.index) == ["2"]


def test_unknown_class_names_and_labels_outside_the_classes_name_file_and_line(tmp_path):
    root = _mafw_splits(tmp_path, "00025.mp4 anger\n00026.mp4 angre\n00027.mp4 joy\n", "00003.mp4 fear\n")
    with pytest.raises(DatasetError) as info:
        open_dataset("mafw", root).fold(1)
    message = str(info.value)
    assert "set_1/train.txt: 2 unknown class names (line 2: 00026.mp4 'angre'; line 3: 00027.mp4 'joy')" in message
    assert "MAFW's classes are anger, disgust" in message and "\n" not in message
    csv = tmp_path / "set_1.csv"
    csv.write_text("video_name,label\n1,1\n2,8\n3,0\n")
    with pytest.raises(DatasetError, match=r"set_1.csv: 2 labels outside 1..7 \(line 3: 2,8; line 4: 3,0\)"):
        read_split_csv(csv)
    (tmp_path / "short").mkdir()
    _mafw_splits(tmp_path / "short", "00025.mp4\n", "1.mp4 fear\n")
    with pytest.raises(DatasetError, match=r"train.txt: 1 lines without a class \(line 1: 00025.mp4\)"):
        open_dataset("mafw", tmp_path / "short").fold(1)


def test_a_clip_in_no_split_of_a_fold_is_an_error(tmp_path, capsys):
    root = _mafw_splits(tmp_path, "1.mp4 anger\n2.mp4 fear\n", "3.mp4 neutral\n")
    (root / "Train & Test Set/single/no_caption/set_4/test.txt").write_text("")  # clip 3 left out of fold 4
    with pytest.raises(DatasetError, match=r"fold 4: 1 clips of other folds are in no split of fold 4 \(e.g. clip 3, "
                                           r"listed in .*set_1/test.txt, line 1\)"):
        open_dataset("mafw", root).load_folds()
    assert main(["folds", "--dataset", "mafw", "--root", str(root)]) == 2
    assert _error_line(capsys.readouterr().err).startswith("error: fold 4")


def test_ferv39k_split_lines_ids_and_frame_folders(tmp_path):
    setups = tmp_path / "4_setups" / "All_scenes"
    setups.mkdir(parents=True)
    (setups / "train_All.csv").write_text("Action/Sad/0010 Sad\nDaily/Happy/0002 Happy\n")
    (setups / "test_All.csv").write_text("Action/Fear/0001 Fear\n")
    for clip in ("Action/Sad/0010", "Daily/Happy/0002", "Action/Fear/0001"):  # unpacked into a folder of its name
        (tmp_path / "2_ClipsforFaceCrop" / "2_ClipsforFaceCrop" / clip).mkdir(parents=True)
    ferv = open_dataset("ferv39k", tmp_path)
    fold = ferv.fold(1)
    assert list(fold.train.index) == ["Action__Sad__0010", "Daily__Happy__0002"]
    assert [FERV.classes[i] for i in fold.train["label"]] == ["sad", "happy"]
    assert sorted(ferv.frame_folders("2_ClipsforFaceCrop")) == sorted([*fold.train.index, *fold.test.index])
    assert ferv.default_face_source() == "2_ClipsforFaceCrop" and ferv.clip_files() == {}
    with pytest.raises(DatasetError, match="fold 2 does not exist: FERV39k has one fixed train/test split"):
        ferv.fold(2)
    (setups / "test_All.csv").write_text("Action/Fear/0001 Fear\nAction/0002 Fear\n")
    with pytest.raises(DatasetError, match=r"test_All.csv: clip 'Action/0002' is not a FERV39k clip path .*\(line 2\)"):
        ferv.fold(1)
    with pytest.raises(DatasetError, match="unknown face source 'clip_224x224': choose one of 2_ClipsforFaceCrop$"):
        ferv.frame_folders("clip_224x224")


def test_dataset_names_folds_and_roots_are_checked_with_the_choices():
    with pytest.raises(ConfigError, match="unknown dataset 'afew': valid datasets are dfew, mafw, ferv39k"):
        get_dataset("afew")
    with pytest.raises(ConfigError, match="data.fold=2: FERV39k has one fixed train/test split"):
        load_config("tiny", ["data.dataset=ferv39k", "data.fold=2"])
    with pytest.raises(ConfigError, match="data.fold=6: MAFW has folds 1..5"):
        load_config("tiny", ["data.dataset=mafw", "data.fold=6"])
    with pytest.raises(ConfigError, match="data.dfew_root names a DFEW copy, but data.dataset=mafw"):
        load_config("tiny", ["data.dataset=mafw", "data.dfew_root=/data/DFEW"])
    assert main(["folds", "--dataset", "mafw", "--dfew-root", "/data/DFEW"]) == 2


# -- synthetic copies of each layout -------------------------------------------------------------------
@pytest.fixture(scope="module")
def mafw_root(tmp_path_factory) -> Path:
    """33 synthetic clips (3 per MAFW class, H.264 + AAC) in MAFW's layout."""
    root = tmp_path_factory.mktemp("mafw")
    assert main(["synth", "--dataset", "mafw", "--out", str(root), "--clips", "33", "--seconds", "1", "--seed", "2",
                 "--workers", "2"]) == 0
    return root


@pytest.fixture(scope="module")
def ferv39k_root(tmp_path_factory) -> Path:
    """21 synthetic clips (3 per class) as FERV39k ships them: folders of face-cropped frames, no video, no audio."""
    root = tmp_path_factory.mktemp("ferv39k")
    assert main(["synth", "--dataset", "ferv39k", "--out", str(root), "--clips", "21", "--seconds", "0.5"]) == 0
    return root


def test_synth_writes_mafw_layout_and_folds_reports_it(mafw_root, capsys):
    assert len(list((mafw_root / "data" / "clips").glob("*.mp4"))) == 33
    lines = (mafw_root / "Train & Test Set/single/no_caption/set_2/test.txt").read_text().splitlines()
    assert lines and all(line.split()[0].endswith(".mp4") and line.split()[1] in MAFW.classes for line in lines)
    assert main(["folds", "--dataset", "mafw", "--root", str(mafw_root)]) == 0
    out = capsys.readouterr().out
    assert "MAFW: 5-fold cross-validation, 11 classes (anger, disgust," in out
    assert "5 folds over 33 unique clips" in out and "33 of 33 listed clips have a video file" in out
    header = next(line for line in out.splitlines() if line.split()[:2] == ["fold", "split"])
    assert header.split()[3:15] == [*MAFW.classes, "with_video"]  # the class distribution, in MAFW's order
    folds = open_dataset("mafw", mafw_root).load_folds()
    assert sorted(set().union(*(set(f.test.index) for f in folds)), key=int) == [str(i) for i in range(1, 34)]


def test_synth_writes_ferv39k_layout_and_folds_reports_it(ferv39k_root, capsys):
    folders = sorted(p for p in (ferv39k_root / "2_ClipsforFaceCrop").glob("*/*/*") if p.is_dir())
    assert len(folders) == 21 and all(len(list(f.glob("*.jpg"))) == 12 for f in folders)  # every frame: 0.5 s at 24 fps
    assert not list(ferv39k_root.rglob("*.mp4"))
    first = (ferv39k_root / "4_setups/All_scenes/train_All.csv").read_text().splitlines()[0]
    scene, emotion, _ = first.split()[0].split("/")
    assert scene == "Synthetic" and first.split()[1] == emotion and emotion.lower() in FERV.classes
    assert main(["folds", "--dataset", "ferv39k", "--root", str(ferv39k_root)]) == 0
    out = capsys.readouterr().out
    assert "FERV39k: a fixed train/test split, 7 classes" in out and "21 of 21 listed clips have face frames" in out


# -- end to end ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mafw_extract_cv_evaluate_predict_and_report(mafw_root, assets_dir, tmp_path, capsys):
    store, runs, preds = tmp_path / "store", tmp_path / "cv", tmp_path / "preds"
    assert main(["extract", "--dataset", "mafw", "--root", str(mafw_root), "--out", str(store), "--workers", "2",
                 "--assets-dir", str(assets_dir), *SHORT]) == 0
    manifest = FeatureStore(store).manifest
    assert (manifest["status"] == "ok").all() and manifest["has_audio"].all() and len(manifest) == 33
    assert main(["cv", "--config", "tiny", "--dataset", "mafw", "--root", str(mafw_root), "--store", str(store),
                 "--folds", "1,2", "--out", str(runs), "--no-progress", *TINY_RUN]) == 0
    assert "mean ± std over 2 folds" in capsys.readouterr().out
    for k in (1, 2):
        result = json.loads((runs / f"fold_{k}" / "test_metrics.json").read_text())
        assert result["classes"] == list(MAFW.classes) and result["dataset"] == "mafw"
        assert np.asarray(result["best"]["confusion"]).shape == (11, 11)
        assert list(result["best"]["per_class_recall"]) == list(MAFW.classes)
    checkpoint = runs / "fold_1" / "best.pt"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--store", str(store), "--out", str(preds / "f1.csv"),
                 "--darken", "0,1", "--no-progress"]) == 0
    frame = pd.read_csv(preds / "f1.csv")
    assert [c for c in frame.columns if c.startswith("prob_")] == [f"prob_{c}" for c in MAFW.classes]
    assert set(frame["label_name"]) <= set(MAFW.classes) and len(frame) == 2 * len(open_dataset(
        "mafw", mafw_root).fold(1).test)
    saved = json.loads((preds / "f1.metrics.json").read_text())
    assert saved["classes"] == list(MAFW.classes) and np.asarray(saved["passes"][0]["confusion"]).shape == (11, 11)
    capsys.readouterr()
    clip = mafw_root / "data" / "clips" / "00001.mp4"
    assert main(["predict", str(clip), "--checkpoint", str(checkpoint), "--top", "11", "--json",
                 "--assets-dir", str(assets_dir)]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert [t["emotion"] for t in result["top"]] != [] and set(result["probs"]) == set(MAFW.classes)
    assert main(["report", str(preds), "--store", str(store), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "low_light_analysis.html").is_file()
    executed = (tmp_path / "report" / "low_light_analysis.ipynb").read_text()
    assert "helplessness" in executed and "disappointment" in executed  # the per-class table of MAFW's classes


@pytest.mark.slow
def test_ferv39k_frames_extract_train_video_and_audio_stops(ferv39k_root, assets_dir, tmp_path, capsys):
    import cv2

    store = tmp_path / "store"
    assert main(["extract", "--dataset", "ferv39k", "--root", str(ferv39k_root), "--out", str(store),
                 "--assets-dir", str(assets_dir), *SHORT]) == 0
    features = FeatureStore(store)
    manifest = features.manifest.set_index("clip_id")
    assert len(manifest) == 21 and (manifest["status"] == "ok").all()
    assert (~manifest["has_audio"].astype(bool)).all() and (manifest["pose_rate"] == 0).all()
    assert not manifest["has_original"].astype(bool).any() and (manifest["face_rate"] == 1).all()
    assert manifest["error"].str.contains("no original clip: faces only, no pose or audio; frame times at "
                                          "FERV39k's nominal 25 fps").all()
    assert features.settings()["face_source"] == "2_ClipsforFaceCrop"
    clip_id = manifest.index[0]
    folder = ferv39k_root / "2_ClipsforFaceCrop" / Path(*clip_id.split("__"))
    arrays = features[clip_id]
    first = cv2.imread(str(folder / f"{arrays['frame_index'][0] + 1}.jpg"))  # the stored face is the frame, resized
    expected = cv2.cvtColor(cv2.resize(first, (48, 48), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    assert np.array_equal(arrays["faces"][0], expected) and arrays["audio"].shape[0] == 0
    common = ["train", "--config", "tiny", "--dataset", "ferv39k", "--root", str(ferv39k_root), "--store", str(store),
              "--no-progress"]
    assert main([*common, "--modalities", "video", "--out", str(tmp_path / "video"), *TINY_RUN]) == 0
    assert (tmp_path / "video" / "test_metrics.json").is_file()
    capsys.readouterr()
    assert main([*common, "--modalities", "audio", "--out", str(tmp_path / "audio"), *TINY_RUN]) == 2
    err = _error_line(capsys.readouterr().err)
    assert "fold 1: audio needs the clips' original videos" in err
    assert "FERV39k distributes face frames only, no original clips: leave out audio (e.g. --modalities video)" in err
    assert not (tmp_path / "audio" / "last.pt").exists()


# -- a dataset defined outside the library ----------------------------------------------------------------
class Moods(Dataset):
    """A made-up dataset: tab-separated lists `<clip>\t<mood>` per fold, 3 classes, 2 folds."""

    name = "moods"
    title = "Moods"
    classes = ("calm", "tense", "elated")
    folds = (1, 2)
    clip_dir = "videos"
    split_folder = "lists"
    layout = "expected Moods layout: ROOT/videos/<n>.mp4, ROOT/lists/fold<k>_<part>.tsv"

    def split_path(self, k: int, part: str) -> Path:
        return Path(f"fold{k}_{part}.tsv")

    def read_split(self, path: Path) -> pd.DataFrame:
        rows = read_fields(path, "\t")
        lines, names = [n for n, _ in rows], [f[0] for _, f in rows]
        ids = clip_ids(path, lines, names, self.clip_id)
        return split_frame(path, lines, ids, class_indices(path, self.title, self.classes, lines,
                                                           [f[1] for _, f in rows], names))

    def format_split(self, rows) -> str:
        return "".join(f"{name}\t{self.classes[label]}\n" for name, label in rows)

    def synth_clip(self, number: int, label: int) -> SynthClip:
        return SynthClip(str(number), Path(self.clip_dir) / f"{number}.mp4", None)


def _moods_copy(root: Path, clips: int = 24) -> Path:
    """Split lists (fold k tests the clips with id % 2 == k - 1) and a store of random arrays."""
    from dfew_mm.synth import write_split_files

    ids, rng = np.arange(1, clips + 1), np.random.default_rng(0)
    labels = ids % 3
    write_split_files(root / "lists", Moods(), {k: ids % 2 == k - 1 for k in (1, 2)}, [str(i) for i in ids], labels)
    store = FeatureStore.__new__(FeatureStore)
    store.path, store._manifest = root / "store", None
    store.path.mkdir(parents=True)
    for i in ids:
        store.write_clip(str(i), random_clip(rng, frames=6, face=32, audio=110))
        store.write_record({**{c: None for c in MANIFEST_COLUMNS}, "clip_id": str(i), "status": "ok", "error": "",
                            "has_audio": True})
    store.rebuild_manifest()
    return store.path


def test_a_sixth_dataset_defined_in_a_test_trains_and_evaluates(tmp_path, capsys):
    from dfew_mm.checkpoint import load_checkpoint
    from dfew_mm.evaluate import evaluate
    from dfew_mm.train import train

    store = _moods_copy(tmp_path)
    (tmp_path / "videos").mkdir()  # the copy's clip folder, empty: the store holds what extraction would write
    with registered(Moods):
        assert "moods" in DATASETS
        assert main(["folds", "--dataset", "moods", "--root", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "Moods: 2-fold cross-validation, 3 classes (calm, tense, elated)" in out
        assert "2 folds over 24 unique clips" in out
        cfg = load_config("tiny", [f"data.store={store}", "data.dataset=moods", f"data.root={tmp_path}",
                                   f"train.out_dir={tmp_path / 'run'}", "model.modalities=[video,pose]", *SMALL,
                                   "train.epochs=2", "data.face_size=32", "data.num_workers=0"])
        run = train(cfg)
        model, saved, _ = load_checkpoint(run / "best.pt")
        assert model.classes == Moods.classes and saved.data.dataset == "moods"
        assert model.unimodal_heads["video"].fc.out_features == 3
        result = evaluate(run / "best.pt", store, out_csv=tmp_path / "preds.csv", num_workers=0)
    frame = pd.read_csv(tmp_path / "preds.csv")
    assert [c for c in frame.columns if c.startswith("prob_")] == ["prob_calm", "prob_tense", "prob_elated"]
    assert np.asarray(result["passes"][0]["confusion"]).shape == (3, 3) and result["passes"][0]["n"] == 12
    assert "moods" not in DATASETS  # registered only inside the block


# -- checkpoints from before datasets had their own classes -------------------------------------------------
def test_a_dfew_checkpoint_without_class_names_still_loads_and_evaluates(trained_run, tmp_path):
    from dfew_mm.checkpoint import load_checkpoint
    from dfew_mm.evaluate import PREDICTION_COLUMNS, evaluate

    ckpt = torch.load(trained_run["run"] / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["classes"] == list(DFEW_CLASSES)
    del ckpt["classes"]  # the format written before datasets: no class names, no data.dataset / data.root
    for key in ("dataset", "root"):
        del ckpt["config"]["data"][key]
    old = tmp_path / "old" / "best.pt"
    old.parent.mkdir()
    torch.save(ckpt, old)
    model, cfg, _ = load_checkpoint(old)
    assert model.classes == DFEW_CLASSES and cfg.data.dataset == "dfew"
    evaluate(old, trained_run["store"], out_csv=tmp_path / "old.csv", num_workers=0)
    evaluate(trained_run["run"] / "best.pt", trained_run["store"], out_csv=tmp_path / "new.csv", num_workers=0)
    before, now = pd.read_csv(tmp_path / "old.csv"), pd.read_csv(tmp_path / "new.csv")
    assert list(before.columns) == list(PREDICTION_COLUMNS)
    assert before.drop(columns="run").equals(now.drop(columns="run"))
