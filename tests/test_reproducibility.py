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


# -- the training soak: killed at random moments, resumed each time, the same run as without kills ---------------
def _train_killed_at(kind: str, n: float, args: list[str]) -> None:
    """In a forked child: run `dfew_mm ARGS` and SIGKILL it at the `n`-th training batch (batch), at the start
    of the `n`-th pass over validation or test clips (validation), halfway through writing the `n`-th
    checkpoint file (save) or just after it is in place (saved), when the test fold's evaluation reads
    best.pt (test) or after `n` seconds (time). The hooks only choose the moment: the training code that runs
    and dies is the real one."""
    import io
    import os
    import signal
    import threading

    import dfew_mm.checkpoint
    import dfew_mm.train
    from dfew_mm.cli import main

    count = 0

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def counting(fn, counts=lambda *a: True):
        def hooked(*a, **k):
            nonlocal count
            count += bool(counts(*a))
            if count == n:
                die()
            return fn(*a, **k)
        return hooked

    def half_written(write):  # torch.save's bytes, cut off halfway, into the checkpoint's temporary file
        def partial(handle) -> None:
            whole = io.BytesIO()
            write(whole)
            handle.write(whole.getvalue()[:len(whole.getvalue()) // 2])
            handle.flush()
            die()
        return partial

    def save(path, write):
        nonlocal count
        count += 1
        write_file(path, half_written(write) if count == n and kind == "save" else write)
        if count == n:  # saved: the file is in place, what the run writes after it is not
            die()

    write_file = dfew_mm.checkpoint.atomic_write_bytes
    if kind == "batch":
        dfew_mm.train.batch_to = counting(dfew_mm.train.batch_to)
    elif kind == "validation":
        dfew_mm.train.fit_member_weights = counting(dfew_mm.train.fit_member_weights)
        dfew_mm.train.evaluate_loader = counting(dfew_mm.train.evaluate_loader)
    elif kind == "test":
        dfew_mm.train.read_checkpoint = counting(dfew_mm.train.read_checkpoint, lambda path, *a: path.name == "best.pt")
    elif kind in ("save", "saved"):
        dfew_mm.checkpoint.atomic_write_bytes = save
    elif kind == "time":
        threading.Timer(n, die).start()
    os._exit(main(args))


def _run(kind: str, n: float, args: list[str]) -> int:
    """Exit status of `dfew_mm ARGS` in a forked child (-9: killed); forking spares the imports of a new process."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=_train_killed_at, args=(kind, n, args))
    child.start()
    child.join()
    return child.exitcode


def _run_files(run: Path) -> dict:
    """What a finished run must repeat: weights, per-epoch metrics (but the clips/s they measured), test results."""
    import json

    import torch

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"last": torch.load(run / "last.pt", weights_only=True)["model"],
            "best": torch.load(run / "best.pt", weights_only=True)["model"],
            "metrics": [{k: v for k, v in m.items() if k != "clips_per_s"} for m in metrics],
            "test_metrics": (run / "test_metrics.json").read_text(),
            "test_predictions": (run / "test_predictions.csv").read_text()}


@pytest.mark.usefixtures("one_torch_thread")
def test_training_killed_at_random_moments_ends_as_an_uninterrupted_run(tmp_path):
    import torch

    from _train_stores import SMALL, make_store

    dfew, store = make_store(tmp_path, clips=30, missing=(3,), frames=6, face=32, audio=110)
    epochs = 10
    # the fused pose+audio model with everything that draws random numbers or keeps state across epochs:
    # dropout and modality dropout, gradient accumulation, augmentation, a loader worker (persistent: started
    # again by each resume), late fusion weighted on validation
    setup = ["--config", "tiny", "--store", str(store), "--dfew-root", str(dfew), "--allow-missing",
             "--modalities", "pose,audio", *SMALL, f"train.epochs={epochs}", "train.grad_accum=2",
             "model.pose.dropout=0.2", "train.modality_dropout=0.3", "data.augment=true", "data.num_workers=1"]
    straight = tmp_path / "straight" / "run"  # the same folder name: the predictions name their run
    assert _run("none", 0, ["train", *setup, "--out", str(straight)]) == 0

    rng = np.random.default_rng(17)
    # each kill within about an epoch of the last checkpoint (3 batches, 2 passes over the validation clips and
    # 1-2 checkpoint files an epoch), so that ten of them fit in the run; the test fold's evaluation last
    plan = [(kind, float(rng.integers(1, top + 1))) for kind, top in
            [("batch", 4), ("batch", 4), ("validation", 2), ("validation", 2), ("save", 2), ("save", 2),
             ("saved", 2), ("saved", 2)]]
    plan += [("time", round(float(rng.uniform(0.2, 1.5)), 2)) for _ in range(2)]
    plan = [plan[i] for i in rng.permutation(len(plan))] + [("test", 1)]
    run = tmp_path / "killed" / "run"
    kills = []
    for kind, n in [*plan, ("none", 0)]:
        # as a user would: resume when a last.pt is there, else start again (a kill before the first epoch ended)
        args = ["train", "--resume", str(run)] if (run / "last.pt").is_file() else ["train", *setup, "--out", str(run)]
        code = _run(kind, n, args)
        if code == 0:
            break
        assert code == -9, (kind, n, code)
        kills.append((kind, n))
    assert (run / "test_metrics.json").is_file()
    assert len(kills) >= 8 and {k for k, _ in kills} >= {"batch", "validation", "save", "saved", "test"}, kills

    a, b = _run_files(straight), _run_files(run)
    for name in ("last", "best"):
        assert a[name].keys() == b[name].keys() and all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    assert [m["epoch"] for m in b["metrics"]] == list(range(epochs))
    for name in ("metrics", "test_metrics", "test_predictions"):
        assert a[name] == b[name], (name, kills)
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_the_demo_twice_with_one_seed_gives_the_same_results(demo_run, assets_dir, tmp_path):
    """`dfew_mm demo` again with the session's demo arguments (seed 0, extraction by two workers): the same
    summary, darkening table, predictions, features and weights; only the measured speeds may differ."""
    import contextlib
    import io
    import json

    import torch

    from dfew_mm.cli import main

    from conftest import DEMO_THREADS, torch_threads

    first, second = demo_run["out"], tmp_path / "demo"
    with contextlib.redirect_stdout(io.StringIO()), torch_threads(DEMO_THREADS):
        assert main(["demo", "--out", str(second), "--assets-dir", str(assets_dir), "--clips", "35",
                     "--epochs", "2", "--seed", "0"]) == 0
    for name in ("summary.csv", "darkening.csv"):
        assert (first / name).read_text() == (second / name).read_text(), name
    predictions = sorted(p.relative_to(first) for p in (first / "predictions").iterdir())
    assert predictions and predictions == sorted(p.relative_to(second) for p in (second / "predictions").iterdir())
    for name in predictions:
        if name.suffix == ".json":  # the metrics beside each predictions file also name the run's folders
            x, y = (json.loads((d / name).read_text()) for d in (first, second))
            assert {k: v for k, v in x.items() if k not in ("checkpoint", "store")} == {
                k: v for k, v in y.items() if k not in ("checkpoint", "store")}, name
        else:
            assert (first / name).read_text() == (second / name).read_text(), name
    a, b = FeatureStore(first / "features"), FeatureStore(second / "features")
    assert a.ok_ids() == b.ok_ids() and len(a.ok_ids()) == 35
    for clip_id in a.ok_ids():
        assert not _same_arrays(a[clip_id], b[clip_id]), clip_id
    for run in ("video", "pose", "audio", "video+pose+audio"):
        x, y = (torch.load(d / "runs" / run / "last.pt", weights_only=True)["model"] for d in (first, second))
        assert all(torch.equal(x[k], y[k]) for k in x), run
        metrics = [[{k: v for k, v in json.loads(line).items() if k != "clips_per_s"}  # a measured speed
                    for line in (d / "runs" / run / "metrics.jsonl").read_text().splitlines()] for d in (first, second)]
        assert metrics[0] == metrics[1], run


def test_persistent_loader_workers_draw_each_epochs_frames(tmp_path):
    """A worker that lives through the epochs samples each epoch's frames, as the main process does."""
    from torch.utils.data import DataLoader

    from _train_stores import SMALL, make_store
    from dfew_mm.batch import collate
    from dfew_mm.config import load_config
    from dfew_mm.data.dataset import ClipDataset

    _, path = make_store(tmp_path, clips=4, frames=12, face=32, audio=110)
    cfg = load_config("tiny", SMALL)
    drawn = {}
    for workers in (0, 1):
        dataset = ClipDataset(FeatureStore(path), ["1", "2", "3", "4"], [0, 1, 2, 3], cfg.data, ["pose"], train=True)
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, persistent_workers=workers > 0,
                            collate_fn=collate)
        drawn[workers] = []
        for epoch in range(3):
            dataset.set_epoch(epoch)
            drawn[workers].append(next(iter(loader))["frame_time"].tolist())
    assert drawn[1] == drawn[0] and drawn[0][0] != drawn[0][1] != drawn[0][2]


def test_the_deterministic_switch(tmp_path, monkeypatch):
    import os

    import torch

    from _train_stores import SMALL, make_store
    from dfew_mm.config import load_config
    from dfew_mm.train import train

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    dfew, store = make_store(tmp_path, clips=20, frames=6, face=32, audio=110)
    common = [f"data.store={store}", f"data.dfew_root={dfew}", "model.modalities=[pose]", *SMALL, "train.epochs=1"]
    try:
        train(load_config("tiny", [*common, f"train.out_dir={tmp_path / 'on'}", "train.deterministic=true"]))
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        train(load_config("tiny", [*common, f"train.out_dir={tmp_path / 'off'}"]))  # the default turns it off again
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
