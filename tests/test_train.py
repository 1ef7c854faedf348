"""The training loop end to end on small stores: run directory, exact resume, checkpoints,
two-process DDP on CPU, cross-validation, and learning the synthetic dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_stores import SMALL, make_store
from dfew_mm.cli import main as cli_main
from dfew_mm.config import load_config
from dfew_mm.errors import DfewMMError
from dfew_mm.checkpoint import load_checkpoint
from dfew_mm.train import train



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """30 clips, clip 3 never extracted (so runs need allow_missing), clip 8 without audio."""
    return make_store(tmp_path_factory.mktemp("train_store"), clips=30, missing=(3,), silent=(8,),
                      frames=6, face=32, audio=110)


def small_config(store, out: Path, *extra: str):
    dfew, path = store
    return load_config("tiny", [f"data.store={path}", f"data.dfew_root={dfew}", f"train.out_dir={out}",
                                "data.allow_missing=true", *SMALL, *extra])


def test_resume_continues_exactly_and_writes_the_run_directory(store, tmp_path):
    extra = ("train.modality_dropout=0.3", "train.grad_accum=2", "model.modalities=[pose,audio]")
    straight = train(small_config(store, tmp_path / "straight", *extra))
    cut = small_config(store, tmp_path / "cut", *extra)
    train(cut, stop_after_epochs=1)
    assert not (tmp_path / "cut" / "test_metrics.json").exists()  # the test fold waits for the end
    train(cut, resume=True)

    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["meta"]["best"] == b["meta"]["best"]

    run = tmp_path / "cut"
    for name in ("config.yaml", "environment.json", "metrics.jsonl", "best.pt", "last.pt", "test_metrics.json",
                 "excluded_clips.csv"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]
    result = json.loads((run / "test_metrics.json").read_text())
    assert result["last"]["epoch"] == 2 and 0 <= result["best"]["epoch"] <= 2
    assert result["best"]["n"] == 6 and len(result["best"]["confusion"]) == 7  # fold 1 test clips
    assert "3,train,not extracted" in (run / "excluded_clips.csv").read_text()
    assert "git_sha" in json.loads((run / "environment.json").read_text())


def test_checkpoints_load_and_reject_other_configurations(store, tmp_path):
    cfg = small_config(store, tmp_path / "run", "train.epochs=1", "model.modalities=[pose,audio]")
    run = train(cfg)
    model, saved, meta = load_checkpoint(run / "best.pt")
    assert saved.model == cfg.model and meta["epoch"] == 0 and not model.training
    other = load_config("tiny", SMALL + ["model.modalities=[pose,audio]", "model.fusion.dim=32"]).model
    with pytest.raises(DfewMMError, match="model.fusion.dim: checkpoint 64, requested 32"):
        load_checkpoint(run / "best.pt", model_cfg=other)
    with pytest.raises(DfewMMError, match="different model configuration"):
        train(small_config(store, run, "train.epochs=1", "model.modalities=[pose]"), resume=True)
    with pytest.raises(DfewMMError, match="already holds a run"):
        train(cfg)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DfewMMError, match="not a readable dfew_mm checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    state = torch.load(run / "best.pt", weights_only=False)
    state["model"].pop(next(k for k in state["model"] if k.endswith(".bias")))  # any weight gone
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(DfewMMError, match="does not match its model configuration"):
        load_checkpoint(tmp_path / "edited.pt")


def test_missing_clips_stop_training_without_allow_missing(store, tmp_path):
    with pytest.raises(DfewMMError, match="1 of 24 train clips of fold 1 .*3 \\(not extracted\\)"):
        train(small_config(store, tmp_path / "run", "data.allow_missing=false"))


def test_two_process_ddp_on_cpu_writes_one_set_of_checkpoints(store, tmp_path):
    dfew, path = store
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dfew_mm.cli", "train", "--config", "tiny", "--store", str(path), "--dfew-root", str(dfew),
           "--out", str(out), "--allow-missing", "--modalities", "video,pose,audio", *SMALL,
           "train.epochs=2", "train.class_balance=sampler"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stderr and "epoch 2:" in done.stderr  # no progress bars in a log, one line per epoch
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "last.pt"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # one writer
    result = json.loads((out / "test_metrics.json").read_text())
    assert result["best"]["n"] == result["last"]["n"] == 6  # both ranks' shards gathered
    assert load_checkpoint(out / "last.pt")[2]["epoch"] == 1


def test_cv_command_trains_folds_and_writes_summary(store, tmp_path, capsys):
    dfew, path = store
    out = tmp_path / "cv"
    args = ["cv", "--config", "tiny", "--folds", "1,2", "--store", str(path), "--dfew-root", str(dfew),
            "--out", str(out), "--allow-missing", "--modalities", "pose", *SMALL, "train.epochs=1"]
    assert cli_main(args) == 0
    assert (out / "fold_1" / "test_metrics.json").is_file() and (out / "fold_2" / "best.pt").is_file()
    summary = (out / "cv_summary.txt").read_text()
    assert "UAR" in summary and "±" in summary
    table = (out / "cv_summary.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in table[1:]] == ["1", "2", "mean", "std", "pooled"]
    assert cli_main(args) == 0  # finished folds are kept, not retrained
    assert "fold" in capsys.readouterr().out


def test_cli_reports_bad_input_without_traceback(store, tmp_path, capsys):
    dfew, _ = store
    assert cli_main(["train", "--config", "tiny", "--store", str(tmp_path / "nowhere"), "--dfew-root", str(dfew)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["train", "--config", "tiny", "--modalities", ","]) == 2
    assert "non-empty" in capsys.readouterr().err
    assert cli_main(["train", "--config", "tiny", "--modalities", "video,smell"]) == 2
    assert "valid modalities are video, pose, audio" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_config_learns_the_synthetic_dataset(synth_store, synth_root, tmp_path):
    cfg = load_config("tiny", [f"data.store={synth_store}", f"data.dfew_root={synth_root}",
                               f"train.out_dir={tmp_path / 'tiny'}"])
    run = train(cfg)
    result = json.loads((run / "test_metrics.json").read_text())
    # 7 classes: chance is 14%; the synthetic cues are learnable from pose and audio alone.
    assert result["best"]["war"] >= 0.4 or result["last"]["war"] >= 0.4, result
    # best.pt: the highest validation UAR, a tie going to the lower validation cross-entropy, then the earlier
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    chosen = max(epochs, key=lambda e: (e["val_uar"], -e["val_nll"], -e["epoch"]))
    assert result["best"]["epoch"] == chosen["epoch"] == epochs[-1]["best_epoch"]


def test_cli_stop_after_and_resume_finish_a_run(store, tmp_path, capsys):
    dfew, path = store
    run = tmp_path / "run"
    common = ["--config", "tiny", "--store", str(path), "--dfew-root", str(dfew), "--allow-missing",
              "--modalities", "pose", *SMALL]
    assert cli_main(["train", *common, "--out", str(run), "--stop-after", "2"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2 and not (run / "test_metrics.json").exists()
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3 and (run / "test_metrics.json").is_file()
    assert "test fold 1: best UAR" in capsys.readouterr().out
    assert cli_main(["train", "--resume", str(tmp_path / "nothing")]) == 2
