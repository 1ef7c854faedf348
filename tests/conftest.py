"""Shared fixtures: real data from ../shared (skipped cleanly when absent) and synthetic data."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic DFEW copy (real H.264/AAC files), generated once per test session."""
    from dfew_mm.data.synthetic import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("synth_dfew")
    generate_dataset(root, SynthConfig(clips=35, seed=3))
    return root
