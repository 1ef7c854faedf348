"""What crashes, full disks and damaged files do to a store or a run: never a crash, a hang or a
silent loss. One section per failure: damaged clip files (1), dying and hanging extraction
workers (2), a manifest out of step with its records (3), full disks (4), runs sharing a store
(5), invalid settings and clip ids (6). Each checks the message, the exit status and that what
was finished before is still there."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from _clips import cremad_folder
from _train_stores import SMALL, make_store, random_clip
from dfew_mm import files
from dfew_mm.checkpoint import save_checkpoint
from dfew_mm.cli import main, one_line
from dfew_mm.config import load_config
from dfew_mm.data.dataset import ClipDataset
from dfew_mm.data.splits import fold_splits
from dfew_mm.data.store import FeatureStore, check_clip_file
from dfew_mm.datasets.dfew import SPLIT_DIRNAME, TEST_DIR, TRAIN_DIR, load_fold
from dfew_mm.errors import ConfigError, DatasetError, StoreError, WriteError
from dfew_mm.extract.run import list_clips, select_clips
from dfew_mm.files import HOST_TAG, atomic_write_bytes, remove_stale_temp_files, temp_owner_alive

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Overrides for the small random stores below (4 frames of 16 px faces, 20 audio frames).
TINY = [*SMALL, "data.face_size=16", "data.audio_frames=20", "model.audio.max_length=32", "train.epochs=1",
        "data.num_workers=0"]


def _store(root: Path, **kw) -> tuple[Path, Path]:
    return make_store(root, clips=20, frames=4, face=16, audio=20, **kw)


def _truncate(path: Path, fraction: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * fraction))


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line and " WARNING " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# -- 1. damaged clip files ------------------------------------------------------------------------
@pytest.fixture
def damaged_store(tmp_path):
    """Fold 1 of a 20-clip store with clip 2 (train) and clip 5 (test) cut to half their size."""
    dfew, path = _store(tmp_path)
    store = FeatureStore(path)
    for clip_id in ("2", "5"):
        _truncate(store.clip_path(clip_id))
    return dfew, path


def _train_args(dfew, store, out, *extra):
    return ["train", "--config", "tiny", "--store", str(store), "--dfew-root", str(dfew), "--out", str(out),
            "--modalities", "pose", *TINY, *extra]


def test_damaged_clips_stop_training_before_the_first_epoch_with_the_full_list(damaged_store, tmp_path, capsys):
    dfew, store = damaged_store
    assert main(_train_args(dfew, store, tmp_path / "run")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "fold 1: 2 clip files in feature store" in line and "cannot be read: 2 (clip" in line
    assert "2 (clip file truncated (" in line and "5 (clip file truncated (" in line
    assert "re-run the same extraction" in line and "--ids 2 5" in line and "--allow-missing" in line
    assert not (tmp_path / "run" / "last.pt").exists()  # stopped before training

    # With --allow-missing the run goes on without them and lists them with the reason.
    assert main(_train_args(dfew, store, tmp_path / "run2", "--allow-missing")) == 0
    excluded = pd.read_csv(tmp_path / "run2" / "excluded_clips.csv", dtype=str).set_index("clip_id")
    assert set(excluded.index) == {"2", "5"}
    assert excluded.loc["2", "split"] == "train" and excluded.loc["5", "split"] == "test"
    assert excluded["reason"].str.startswith("unreadable: clip file truncated").all()
    assert (tmp_path / "run2" / "best.pt").is_file()


def test_damaged_clips_stop_evaluate_and_embed_or_are_excluded(tmp_path, capsys):
    dfew, store = _store(tmp_path)
    assert main(_train_args(dfew, store, tmp_path / "run")) == 0
    for clip_id in ("2", "5"):
        _truncate(FeatureStore(store).clip_path(clip_id))
    capsys.readouterr()
    evaluate = ["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--store", str(store),
                "--out", str(tmp_path / "preds" / "f1.csv")]
    assert main(evaluate) == 2
    line = _one_error_line(capsys.readouterr().err)
    # evaluating fold 1's test split reads only its test clips: 5 is one of them, 2 (a training clip) is not
    assert "5 (clip file truncated" in line and "2 (clip file truncated" not in line
    assert not (tmp_path / "preds" / "f1.csv").exists()
    assert main([*evaluate, "--allow-missing"]) == 0
    predictions = pd.read_csv(tmp_path / "preds" / "f1.csv", dtype={"clip_id": str})
    assert "5" not in set(predictions["clip_id"]) and len(predictions) == 3  # fold 1 tests 4 clips
    excluded = pd.read_csv(tmp_path / "preds" / "f1.excluded_clips.csv", dtype=str)
    assert set(excluded["clip_id"]) == {"5"}

    embed = ["embed", "--config", "tiny", "--store", str(store), "--out", str(tmp_path / "emb"),
             "--modalities", "video", *TINY]
    capsys.readouterr()
    assert main(embed) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "embed: 2 clip files" in line and "--ids 2 5" in line
    assert main([*embed, "--allow-missing"]) == 0
    assert sorted(p.stem for p in (tmp_path / "emb" / "clips").glob("*.npz")) == sorted(
        str(i) for i in range(1, 21) if i not in (2, 5))
    assert set(pd.read_csv(tmp_path / "emb" / "excluded_clips.csv", dtype=str)["clip_id"]) == {"2", "5"}


def test_a_clip_damaged_during_training_names_the_clip(tmp_path):
    dfew, path = _store(tmp_path)
    store = FeatureStore(path)
    cfg = load_config("tiny", [f"data.store={path}", f"data.dfew_root={dfew}", *TINY])
    clip = store.clip_path("7")
    data = bytearray(clip.read_bytes())
    at = data.find(store["7"]["faces"].tobytes()[:256])
    data[at: at + 64] = bytes(64)  # same size, damaged face pixels: a CRC error on read
    clip.write_bytes(bytes(data))
    assert check_clip_file(clip, store.read_record("7")["npz_bytes"]) == ""  # passes the start-up check
    dataset = ClipDataset(store, ["6", "7"], [0, 1], cfg.data, ["video", "pose", "audio"], train=True)
    dataset[0]
    with pytest.raises(StoreError, match=r"cannot read clip 7 from .*7\.npz \(BadZipFile: .*--ids 7"):
        dataset[1]
    # Raised in a DataLoader worker, the error comes back wrapped in a traceback: the CLI keeps one line.
    wrapped = ("Caught StoreError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\ndfew_mm.errors.StoreError: cannot read clip 7 from s/7.npz (BadZipFile)\n')
    assert one_line(wrapped) == "cannot read clip 7 from s/7.npz (BadZipFile)"


def test_clip_file_checks(tmp_path):
    _, path = _store(tmp_path)
    store = FeatureStore(path)
    size = store.clip_path("3").stat().st_size
    assert store.read_record("3")["npz_bytes"] == size and store.is_done("3")
    assert check_clip_file(store.clip_path("3"), size) == ""
    _truncate(store.clip_path("3"))
    assert check_clip_file(store.clip_path("3"), size).startswith("clip file truncated")
    assert not store.is_done("3")
    # Records of older stores carry no size: the zip directory read still catches the damage.
    assert check_clip_file(store.clip_path("3"), None).startswith("clip file damaged")
    store.clip_path("4").write_bytes(b"")
    assert not store.is_done("4") and check_clip_file(store.clip_path("404")) == "clip file missing"


# -- 2. extraction workers that die or hang; 1, 4 and 5 for a real extraction ---------------------
CREMAD = ("1001_DFA_ANG_XX", "1001_DFA_DIS_XX", "1001_DFA_FEA_XX", "1001_DFA_HAP_XX", "1001_DFA_SAD_XX")


def _extract(folder: Path, out: Path, assets_dir: Path, *args: str, faults: str = "", ulimit_kb: int = 0):
    command = [sys.executable, "-m", "dfew_mm.cli", "extract", "--clips-dir", str(folder), "--out", str(out),
               "--assets-dir", str(assets_dir), "--no-progress", *args]
    if ulimit_kb:  # a real write failure (EFBIG) at that file size, without a small filesystem
        command = ["bash", "-c", f'ulimit -f {ulimit_kb}; exec "$@"', "bash", *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DFEW_MM_TEST_WORKER_FAULTS": faults}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_worker_deaths_and_hangs_fail_one_clip_each_and_the_run_goes_on(tmp_path, clips_dir, assets_dir):
    folder = cremad_folder(tmp_path / "videos", clips_dir, CREMAD)
    out = tmp_path / "features"
    ang, dis, fea, hap, sad = CREMAD

    # Two workers: one aborts in native code on std::bad_alloc (and is replaced), one hangs.
    done = _extract(folder, out, assets_dir, "--workers", "2", "--clip-timeout", "8",
                    faults=f"{hap}=bad_alloc,{fea}=hang")
    assert done.returncode == 0, done.stderr
    assert "done: 3 ok, 2 failed, 0 already done" in done.stdout
    manifest = FeatureStore(out).manifest.set_index("clip_id")
    assert sorted(manifest.index) == sorted(CREMAD)
    assert (manifest.loc[[ang, dis, sad], "status"] == "ok").all()
    assert manifest.loc[hap, "error"].startswith("worker process aborted (SIGABRT) in native code: terminate "
                                                 "called after throwing an instance of 'std::bad_alloc'")
    assert "fewer --frames" in manifest.loc[hap, "error"]
    assert manifest.loc[fea, "error"] == "worker process timed out after 8 s (--clip-timeout); the worker was stopped"
    assert f"clip {hap}" in done.stderr and not list(out.rglob("*.tmp"))
    stamp = FeatureStore(out).clip_path(ang).stat().st_mtime_ns

    # A damaged clip file, a temporary file of a live writer (this test process, as if a second run
    # were writing it) and one of a dead writer; then a write fails (file size limit).
    store = FeatureStore(out)
    _truncate(store.clip_path(dis))
    live = store.clips_dir / f".{hap}.npz.{HOST_TAG}-{os.getpid()}.abcd1234.tmp"
    dead = store.clips_dir / f".{fea}.npz.{HOST_TAG}-{_dead_pid()}.abcd1234.tmp"
    live.write_bytes(b"in flight")
    dead.write_bytes(b"left by a killed run")
    full = _extract(folder, out, assets_dir, ulimit_kb=64)
    assert full.returncode == 2, full.stderr
    line = _one_error_line(full.stderr)
    assert f"cannot write {store.clip_path(dis)}: File too large" in line and "re-run the same command" in line
    assert live.exists() and not dead.exists()
    assert [p for p in out.rglob("*.tmp") if p != live] == []
    assert store.clip_path(ang).stat().st_mtime_ns == stamp

    # One worker, killed (SIGKILL) on one clip: the parent survives, redoes the damaged clip, keeps the rest.
    done = _extract(folder, out, assets_dir, faults=f"{hap}=kill")
    assert done.returncode == 0, done.stderr
    assert "done: 2 ok, 1 failed, 2 already done" in done.stdout
    store = FeatureStore(out)
    manifest = store.manifest.set_index("clip_id")
    assert list(manifest["status"]) == ["ok", "ok", "ok", "failed", "ok"]
    assert manifest.loc[hap, "error"] == ("worker process killed by SIGKILL (as the out-of-memory killer does); if "
                                          "memory ran out: use fewer --workers, fewer --frames or more memory")
    assert store.clip_path(ang).stat().st_mtime_ns == stamp and store.is_done(dis)
    assert store[dis]["faces"].shape == (16, 112, 112, 3)
    live.unlink()


def test_a_worker_that_cannot_start_stops_the_run_with_the_reason(tmp_path, clips_dir, assets_dir):
    assets = tmp_path / "assets"
    assets.mkdir()
    for model in assets_dir.iterdir():
        (assets / model.name).symlink_to(model)
    (assets / "pose_landmarker_full.task").unlink()
    (assets / "pose_landmarker_full.task").write_bytes(b"not a model" * 100)
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / f"{CREMAD[0]}.flv").symlink_to(clips_dir / "cremad" / f"{CREMAD[0]}.flv")
    done = _extract(folder, tmp_path / "features", assets)
    assert done.returncode == 2  # not a pool that restarts the worker for ever
    assert _one_error_line(done.stderr) == ("error: an extraction worker could not start: RuntimeError: Unable to "
                                            "open zip archive.")


# -- 3. manifest out of step with the records -------------------------------------------------------
def test_manifest_is_rebuilt_when_records_disagree(tmp_path, caplog):
    dfew, path = _store(tmp_path, missing=(3,), failed=(4,))
    store = FeatureStore(path)
    assert "3" not in set(store.manifest["clip_id"])
    # What a killed extraction leaves: clips and records written after the last manifest rebuild.
    rng = np.random.default_rng(0)
    store.write_clip("3", random_clip(rng, frames=4, face=16, audio=20))
    store.write_record({"clip_id": "3", "status": "ok", "error": "", "has_audio": True})
    store.write_clip("4", random_clip(rng, frames=4, face=16, audio=20))
    store.write_record({"clip_id": "4", "status": "ok", "error": "", "has_audio": True})  # failed -> ok
    fresh = FeatureStore(path)
    assert fresh.manifest_staleness() == "1 records not in manifest.csv, 0 rows without a record"
    manifest = fresh.manifest.set_index("clip_id")
    assert manifest.loc["3", "status"] == "ok" and manifest.loc["4", "status"] == "ok"
    assert FeatureStore(path).manifest_staleness() == ""  # rebuilt on disk
    splits = fold_splits(FeatureStore(path), load_config("tiny", [f"data.store={path}", f"data.dfew_root={dfew}",
                                                                  *TINY]).data, seed=0)
    assert len(splits.excluded) == 0

    # A newer record alone (same clip set) also counts; a store that cannot be written serves the records.
    time.sleep(0.05)  # file times can be as coarse as the kernel's clock tick
    store.write_record({"clip_id": "4", "status": "failed", "error": "decode error"})
    assert FeatureStore(path).manifest_staleness() == "records newer than manifest.csv"
    before = store.manifest_path.read_bytes()

    def read_only(path, write):
        raise files.write_error(Path(path), OSError(errno.EROFS, "Read-only file system"))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("dfew_mm.data.store.atomic_write_bytes", read_only)
        manifest = FeatureStore(path).manifest.set_index("clip_id")
    assert manifest.loc["4", "status"] == "failed" and store.manifest_path.read_bytes() == before
    assert "cannot be rewritten" in caplog.text and "using the records" in caplog.text


# -- 4. full disks ---------------------------------------------------------------------------------
class _FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written, as on a full disk."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.fixture
def full_disk(monkeypatch):
    """From the call on, every atomic write has `room` bytes; the real file system does the rest."""
    real = files._open_temp

    def install(room: int = 1000):
        monkeypatch.setattr(files, "_open_temp", lambda fd: _FullDisk(real(fd), room))

    return install


def test_a_full_disk_keeps_the_previous_file_and_says_what_to_do(tmp_path, full_disk):
    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, lambda f: f.write(b"complete"))
    full_disk(room=4)
    with pytest.raises(WriteError) as info:
        atomic_write_bytes(target, lambda f: f.write(b"new content"))
    assert str(info.value) == (f"cannot write {target}: No space left on device (free disk space or write to another "
                               "folder); the previous version of the file is unchanged")
    assert target.read_bytes() == b"complete" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_checkpoint_save_on_a_full_disk(tmp_path, full_disk):
    last = tmp_path / "last.pt"
    save_checkpoint(last, {"epoch": 1, "weights": torch.zeros(10)})
    full_disk(room=2000)
    with pytest.raises(WriteError) as info:  # not torch's "unexpected pos" RuntimeError
        save_checkpoint(last, {"epoch": 2, "weights": torch.zeros(100_000)})
    message = str(info.value)
    assert message.startswith(f"cannot write {last}: No space left on device")
    assert f"resume with `dfew_mm train --resume {tmp_path}`" in message and "\n" not in message
    assert torch.load(last)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_training_on_a_full_disk_stops_with_one_line_and_resumes(tmp_path, full_disk, capsys):
    dfew, store = _store(tmp_path)
    run = tmp_path / "run"
    assert main([*_train_args(dfew, store, run, "train.epochs=2"), "--stop-after", "1"]) == 0
    saved = torch.load(run / "last.pt", weights_only=False)["meta"]["epoch"]
    # A save killed outright leaves a temporary file; the next start removes it (its writer is dead).
    leftover = run / f".last.pt.{HOST_TAG}-{_dead_pid()}.x1y2z3ab.tmp"
    leftover.write_bytes(bytes(1000))
    capsys.readouterr()
    full_disk(room=20_000)  # the run record fits, a checkpoint does not
    assert main(["train", "--resume", str(run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and f"--resume {run}" in line
    assert not leftover.exists() and not list(run.glob(".*.tmp"))
    assert torch.load(run / "last.pt", weights_only=False)["meta"]["epoch"] == saved  # the last complete epoch
    full_disk(room=1 << 40)
    assert main(["train", "--resume", str(run)]) == 0 and (run / "test_metrics.json").is_file()


def test_evaluate_predictions_on_a_full_disk(tmp_path, trained_run, capsys, full_disk):
    out = tmp_path / "preds" / "f1.csv"
    args = ["evaluate", "--checkpoint", str(trained_run["run"] / "best.pt"), "--store", str(trained_run["store"]),
            "--out", str(out)]
    assert main(args) == 0
    before = out.read_bytes()
    full_disk(room=100)
    capsys.readouterr()
    assert main([*args, "--darken", "0.5"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot write {out}: No space left on device" in line
    assert out.read_bytes() == before and not list(out.parent.glob(".*.tmp"))


def test_extraction_end_keeps_the_first_error_when_the_manifest_cannot_be_written(tmp_path, assets_dir, capsys,
                                                                                 caplog, monkeypatch):
    """A worker stopped on a full disk; rebuilding the manifest then fails too: one line, the first cause."""
    import dfew_mm.extract.run as run_module

    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.mp4").write_bytes(b"x")
    out = tmp_path / "features"

    class FullDiskPool:
        def __init__(self, workers, options, model_paths, store_path, clip_timeout):
            self.store = FeatureStore(store_path)

        def run(self, items):
            self.store.write_record({"clip_id": "a", "status": "failed", "error": "finished before the disk filled"})
            yield {"clip_id": "a", "status": "failed", "error": "finished before the disk filled"}
            raise StoreError(f"clip b: cannot write {self.store.clip_path('b')}: No space left on device (free disk "
                             "space or write to another folder); then re-run the same command to resume")

    def no_space(self):
        raise files.write_error(self.manifest_path, OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(run_module, "SupervisedPool", FullDiskPool)
    monkeypatch.setattr(FeatureStore, "rebuild_manifest", no_space)
    assert main(["extract", "--clips-dir", str(folder), "--out", str(out), "--assets-dir", str(assets_dir)]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith("error: clip b: cannot write")
    assert "could not rebuild the manifest either" in caplog.text
    assert FeatureStore(out).read_record("a")["error"] == "finished before the disk filled"


# -- 5. runs sharing a store: temporary files belong to their writer ---------------------------------
def test_clean_up_removes_only_temporary_files_of_dead_writers(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "live": f".1.npz.{HOST_TAG}-{sleeper.pid}.k2j3h4g5.tmp",  # another run, writing now
            "dead": f".2.npz.{HOST_TAG}-{_dead_pid()}.k2j3h4g5.tmp",
            "own_pid": f".3.npz.{HOST_TAG}-{os.getpid()}.k2j3h4g5.tmp",  # an earlier process with our pid
            "other_host": f".4.npz.node-17_cluster-{sleeper.pid}.k2j3h4g5.tmp",  # cannot be checked from here
            "old_version": ".5.npz.k2j3h4g5.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        (tmp_path / "6.npz").write_bytes(b"complete")
        removed, kept = remove_stale_temp_files([tmp_path])
        assert sorted(p.name for p in kept) == sorted([names["live"], names["other_host"]])
        assert sorted(p.name for p in removed) == sorted([names["dead"], names["own_pid"], names["old_version"]])
        assert (tmp_path / "6.npz").read_bytes() == b"complete"
        # A day untouched: no live writer, whatever the host.
        assert not temp_owner_alive(names["other_host"], time.time() - 2 * 86400)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_temporary_files_are_named_after_their_writer(tmp_path):
    seen = []
    atomic_write_bytes(tmp_path / "7.json", lambda f: seen.extend(p.name for p in tmp_path.iterdir()))
    assert len(seen) == 1 and seen[0].startswith(f".7.json.{HOST_TAG}-{os.getpid()}.") and seen[0].endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["7.json"]


# -- 6. settings and clip ids ------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("data.frames=0", "data.frames=0 is out of range: it must be a number at least 1 and at most 512"),
    ("data.frames=100000", "data.frames=100000 is out of range"),
    ("data.face_size=4", "data.face_size=4 is out of range"),
    ("data.audio_frames=0", "data.audio_frames=0 is out of range"),
    ("train.lr=nan", "train.lr=nan is out of range: it must be a number above 0"),
    ("train.lr=-0.1", "train.lr=-0.1 is out of range"),
    ("train.batch_size=0", "train.batch_size=0 is out of range"),
    ("train.label_smoothing=1.5", "train.label_smoothing=1.5 is out of range"),
    ("model.fusion.heads=3", "model.fusion.dim=64 must be divisible by model.fusion.heads=3"),
])
def test_config_numbers_out_of_range(override, message, capsys):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("tiny", [override])
    assert main(["train", "--config", "tiny", override]) == 2
    assert message in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("args, message", [
    (["--limit", "-1"], "--limit -1: must be at least 1"),
    (["--limit", "0"], "--limit 0: must be at least 1"),
    (["--workers", "0"], "--workers 0: must be at least 1"),
    (["--frames", "100000"], "--frames 100000: must be 1..512"),
    (["--face-size", "4"], "--face-size 4: must be 8..512"),
    (["--clip-timeout", "0"], "--clip-timeout 0: must be above 0"),
])
def test_extract_options_out_of_range(tmp_path, args, message, capsys):
    assert main(["extract", "--clips-dir", str(tmp_path), "--out", str(tmp_path / "out"), *args]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"error: {message}"
    assert not (tmp_path / "out").exists()


def test_yaml_that_is_not_a_mapping_is_one_line(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- train\n")
    assert main(["train", "--config", str(tmp_path / "list.yaml")]) == 2
    assert "must be a mapping" in _one_error_line(capsys.readouterr().err)


def test_clip_ids_that_only_look_like_numbers(tmp_path, capsys, caplog):
    # '²'.isdigit() is True, int('²') raises: a split file with it is a DatasetError naming the file.
    base = tmp_path / "dfew" / SPLIT_DIRNAME
    for sub, rows in ((TRAIN_DIR, "1,1\n²,2\n"), (TEST_DIR, "3,3\n")):
        (base / sub).mkdir(parents=True)
        for k in range(1, 6):
            (base / sub / f"set_{k}.csv").write_text(f"video_name,label\n{rows}")
    with pytest.raises(DatasetError, match=r"set_1.csv: clip name '²' is not a DFEW clip number"):
        load_fold(1, dfew_root=tmp_path / "dfew")
    assert main(["folds", "--dfew-root", str(tmp_path / "dfew")]) == 2
    assert "not a DFEW clip number" in _one_error_line(capsys.readouterr().err)

    # As a file name: in a folder of videos it is an ordinary id; under DFEW's Clip/original it is skipped.
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("²", "10", "9", "b"):
        (folder / f"{name}.mp4").write_bytes(b"x")
    assert [i for i, _ in select_clips(list_clips(clips_dir=folder))] == ["9", "10", "b", "²"]
    original = tmp_path / "root" / "Clip" / "original"
    original.mkdir(parents=True)
    for name in ("²", "7"):
        (original / f"{name}.mp4").write_bytes(b"x")
    assert list(list_clips(dfew_root=tmp_path / "root")) == ["7"]
    assert "².mp4 (not named by a clip number)" in caplog.text
    with pytest.raises(DatasetError, match="--ids: clip name '²' is not a DFEW clip number"):
        select_clips(list_clips(dfew_root=tmp_path / "root"), ids=["²"], dfew_ids=True)


def test_symlink_loops_and_folders_named_like_clips_are_named_in_a_warning(tmp_path, caplog):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "ok.mp4").write_bytes(b"x")
    (folder / "loop.mp4").symlink_to(folder / "loop.mp4")
    (folder / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (folder / "12.mp4").mkdir()
    assert list(list_clips(clips_dir=folder)) == ["ok"]
    assert ("skipping 3 entries that are not video files to extract: 12.mp4 (a directory), gone.mp4 (broken "
            "symlink), loop.mp4 (symlink loop)") in caplog.text
