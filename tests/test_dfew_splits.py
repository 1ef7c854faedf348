"""DFEW split parsing and validation: real split files and every bad-input case."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dfew_mm.cli import main
from dfew_mm.datasets.dfew import (CLIP_DIR, SPLIT_DIRNAME, TEST_DIR, TRAIN_DIR, fold_summary,
                               index_clip_files, load_fold, load_folds, unique_clips)
from dfew_mm.errors import DatasetError

# Per-class counts of the real DFEW split files (happy, sad, neutral, angry, surprise, disgust, fear).
FOLD1_TRAIN = [1956, 1515, 2135, 1738, 1175, 116, 721]
FOLD1_TEST = [489, 379, 534, 435, 294, 29, 181]
TOTAL_PER_CLASS = [2445, 1894, 2669, 2173, 1469, 145, 902]


def test_real_splits_counts(splits_dir):
    folds = load_folds(splits_dir=splits_dir)
    assert len(folds) == 5
    assert len(unique_clips(folds)) == 11_697
    table = fold_summary(folds, None).set_index(["fold", "split"])
    classes = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
    assert table.loc[(1, "train"), "clips"] == 9_356
    assert table.loc[(1, "test"), "clips"] == 2_341
    assert table.loc[(1, "train"), classes].tolist() == FOLD1_TRAIN
    assert table.loc[(1, "test"), classes].tolist() == FOLD1_TEST
    for fold in folds:  # every fold covers every clip exactly once
        assert len(fold.train) + len(fold.test) == 11_697
        per_class = (fold.train["label"].value_counts() + fold.test["label"].value_counts()).sort_index()
        assert per_class.tolist() == TOTAL_PER_CLASS
    tests = set().union(*(set(f.test.index) for f in folds))
    assert len(tests) == 11_697  # the five test sets partition the dataset


def test_folds_cli_reports_video_files(splits_dir, tmp_path, capsys):
    root = tmp_path / "DFEW"
    shutil.copytree(splits_dir / SPLIT_DIRNAME, root / SPLIT_DIRNAME)
    clips = root / CLIP_DIR
    clips.mkdir(parents=True)
    (clips / "2522.mp4").touch()  # both naming styles count as the same clip id
    (clips / "02536.mp4").touch()
    assert main(["folds", "--dfew-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "5 folds over 11,697 unique clips" in out
    assert "2 of 11,697 listed clips have a video file" in out
    assert set(index_clip_files(clips)) == {2522, 2536}


def _write_splits(root: Path, train_rows: str, test_rows: str, header: str = "video_name,label") -> Path:
    base = root / SPLIT_DIRNAME
    for sub, rows in ((TRAIN_DIR, train_rows), (TEST_DIR, test_rows)):
        (base / sub).mkdir(parents=True, exist_ok=True)
        for k in range(1, 6):
            (base / sub / f"set_{k}.csv").write_text(f"{header}\n{rows}")
    return root


def test_small_valid_layout(tmp_path):
    root = _write_splits(tmp_path, "00001,1\n2,7\n", "3,3\n")
    fold = load_fold(2, dfew_root=root)
    assert list(fold.train.index) == [1, 2]
    assert fold.train["label"].tolist() == [0, 6]  # 0-based inside the library


@pytest.mark.parametrize(
    "train_rows, test_rows, header, message",
    [
        ("1,1\n", "2,8\n", "video_name,label", "labels outside 1..7"),
        ("1,0\n", "2,1\n", "video_name,label", "labels outside 1..7"),
        ("1,x\n", "2,1\n", "video_name,label", "labels outside 1..7"),
        ("1,1\n1,2\n", "2,1\n", "video_name,label", "listed twice"),
        ("1,1\n2,1\n", "2,1\n", "video_name,label", "in both"),
        ("1,1\n", "2,1\n", "name,emotion", "expected video_name,label"),
        ("abc,1\n", "2,1\n", "video_name,label", "not a DFEW clip number"),
    ],
)
def test_bad_split_files(tmp_path, train_rows, test_rows, header, message):
    root = _write_splits(tmp_path, train_rows, test_rows, header)
    with pytest.raises(DatasetError, match=message) as info:
        load_fold(1, dfew_root=root)
    assert "set_1.csv" in str(info.value) or "fold 1" in str(info.value)


def test_missing_folders_explain_layout(tmp_path, capsys):
    with pytest.raises(DatasetError, match="expected DFEW layout"):
        load_fold(1, dfew_root=tmp_path)
    (tmp_path / SPLIT_DIRNAME / TRAIN_DIR).mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"test\(single-labeled\)"):
        load_fold(1, dfew_root=tmp_path)
    with pytest.raises(DatasetError, match="folds 1..5"):
        load_fold(6, dfew_root=tmp_path)
    # the CLI turns these into one line on stderr and exit code 2, never a traceback
    assert main(["folds", "--dfew-root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_missing_split_file(tmp_path):
    root = _write_splits(tmp_path, "1,1\n", "2,1\n")
    (root / SPLIT_DIRNAME / TEST_DIR / "set_3.csv").unlink()
    with pytest.raises(DatasetError, match="missing split file .*set_3.csv"):
        load_fold(3, dfew_root=root)


def test_duplicate_clip_files(tmp_path):
    (tmp_path / "1.mp4").touch()
    (tmp_path / "00001.mp4").touch()
    with pytest.raises(DatasetError, match="exists twice"):
        index_clip_files(tmp_path)
