"""Shared fixtures: real data from ../shared (skipped cleanly when absent) and synthetic data."""

from __future__ import annotations

import contextlib

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DFEW_MM_SHARED", REPO.parent / "shared"))
SPLITS = SHARED / "data" / "dfew_splits"
CLIPS = SHARED / "data" / "clips"
ASSETS = SHARED / "assets" / "mediapipe"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (real data for tests lives in ../shared)")
    return path


@pytest.fixture(scope="session")
def splits_dir() -> Path:
    return _need(SPLITS)


@pytest.fixture(scope="session")
def clips_dir() -> Path:
    return _need(CLIPS)


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return _need(ASSETS)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one torch thread avoids oversubscribing the shared CI cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hub_offline():
    """No test may reach the network: the Hugging Face hub behaves as on an offline machine."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic DFEW copy (real H.264/AAC files), generated once per test session."""
    from dfew_mm.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("synth_dfew")
    generate_dataset(root, SynthConfig(clips=35, seed=3))
    return root


@pytest.fixture(scope="session")
def synth_store(synth_root, assets_dir, tmp_path_factory) -> Path:
    """The real extractor (16 frames, 112 px faces, 2 workers) run once per session on `synth_root`."""
    from dfew_mm.extract.options import ExtractOptions
    from dfew_mm.extract.run import list_clips, run_extraction, select_clips

    out = tmp_path_factory.mktemp("synth_store")
    clips = select_clips(list_clips(dfew_root=synth_root))
    summary = run_extraction(clips, out, ExtractOptions(), workers=2, assets_dir=assets_dir, progress=False)
    if summary.ok != len(clips):
        raise RuntimeError("extraction of the synthetic clips failed:\n" + "\n".join(summary.lines()))
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> dict:
    """A tiny video+audio model trained for two epochs on a store of random arrays (seconds; no
    MediaPipe assets needed): the checkpoint for evaluation and prediction tests."""
    import torch

    from _train_stores import SMALL, make_store
    from dfew_mm.config import load_config
    from dfew_mm.train import train

    root = tmp_path_factory.mktemp("trained_run")
    dfew, store = make_store(root, clips=30, frames=6, face=32, audio=110)
    cfg = load_config("tiny", [f"data.store={store}", f"data.dfew_root={dfew}", f"train.out_dir={root / 'run'}",
                               "model.modalities=[video,audio]", *SMALL, "train.epochs=2"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train(cfg)
    finally:
        torch.set_num_threads(threads)
    return {"run": run, "store": store, "dfew": dfew}


@contextlib.contextmanager
def torch_threads(n: int):
    """Training on `n` torch threads, whatever a module fixture set: CPU sums over another number of
    threads round differently, so runs compared bit for bit must train on the same number."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


DEMO_THREADS = 1  # the session's demo and its repetition in test_reproducibility train on this many


@pytest.fixture(scope="session")
def demo_run(assets_dir, tmp_path_factory) -> dict:
    """`dfew_mm demo` run once per session (35 clips, 2 epochs): its output folder and printed text.

    Evaluation, prediction and notebook tests reuse its store, checkpoints and predictions.
    """
    import io

    from dfew_mm.cli import main

    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), torch_threads(DEMO_THREADS):
        code = main(["demo", "--out", str(out), "--assets-dir", str(assets_dir), "--clips", "35", "--epochs", "2"])
    if code != 0:
        raise RuntimeError(f"dfew_mm demo exited with {code}:\n{printed.getvalue()}")
    return {"out": out, "stdout": printed.getvalue()}
