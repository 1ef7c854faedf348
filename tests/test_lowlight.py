"""The low-light model (dfew_mm.lowlight): one model for frames and crops, exact sampling, seeds, errors."""

from __future__ import annotations

import numpy as np
import pytest

from dfew_mm import lowlight
from dfew_mm.lowlight import Darken, clip_rng, darken, darken_frames, darken_inplace, model_parameters


def _direct(values: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """The model drawn the slow way: Poisson electrons and Gaussian read noise per pixel."""
    p = model_parameters(strength)
    levels = 255.0 * p["gain"] * (values.astype(np.float64) / 255.0) ** p["gamma"]
    e = p["levels_per_electron"]
    noisy = rng.poisson(levels / e) * e + rng.normal(0.0, p["read_noise"], values.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("strength", [0.05, 0.25, 0.5, 1.0])
def test_table_sampling_matches_the_poisson_and_gaussian_model(strength):
    rng = np.random.default_rng(0)
    for value in (0, 12, 60, 128, 230, 255):
        pixels = np.full((200_000, 3), value, np.uint8)
        ours = darken(pixels, strength, rng).astype(np.float64)
        slow = _direct(pixels, strength, rng).astype(np.float64)
        assert abs(ours.mean() - slow.mean()) < 0.05, (value, ours.mean(), slow.mean())
        assert abs(ours.std() - slow.std()) < 0.02 * slow.std() + 0.02, (value, ours.std(), slow.std())
    pmf = lowlight.output_distribution(strength)
    assert pmf.shape == (256, 256) and np.allclose(pmf.sum(axis=1), 1.0)


def test_strength_zero_is_identity_and_darkening_grows_with_strength():
    frames = np.random.default_rng(0).integers(40, 230, (3, 48, 64, 3), dtype=np.uint8)  # (T, H, W, 3)
    assert np.array_equal(darken(frames, 0.0, np.random.default_rng(0)), frames)
    means = [darken(frames, s, np.random.default_rng(0)).mean() for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(a > b for a, b in zip(means, means[1:])), means
    dark = darken(frames, 1.0, np.random.default_rng(0))
    assert dark.dtype == np.uint8 and dark.shape == frames.shape and dark.mean() < 0.15 * frames.mean()
    flat = np.full((2, 16, 16, 3), 150, np.uint8)
    assert darken(flat, 0.7, np.random.default_rng(1)).std() > 1.0  # sensor noise


def test_frames_in_place_and_crops_share_the_model():
    frames = np.random.default_rng(2).integers(0, 256, (2, 40, 50, 3), dtype=np.uint8)
    expected = darken(frames, 0.6, np.random.default_rng(5))
    work = frames.copy()
    assert darken_frames(work, 0.6, np.random.default_rng(5)) is work  # no copy of a 1080p clip
    assert np.array_equal(work, expected)
    assert np.array_equal(Darken(0.6)(frames, np.random.default_rng(5)), expected)  # the crop-level transform
    view = frames[:, ::2]  # not contiguous: darkened into a copy, the input is left alone
    before = view.copy()
    assert np.array_equal(darken_frames(view, 0.6, np.random.default_rng(5)),
                          darken(before, 0.6, np.random.default_rng(5)))
    assert np.array_equal(view, before)


def test_clip_seeds_are_reproducible_and_distinct():
    frames = np.full((2, 32, 32, 3), 120, np.uint8)
    a = darken(frames, 0.5, clip_rng("42", seed=0))
    assert np.array_equal(a, darken(frames, 0.5, clip_rng("42", seed=0)))
    assert not np.array_equal(a, darken(frames, 0.5, clip_rng("43", seed=0)))
    assert not np.array_equal(a, darken(frames, 0.5, clip_rng("42", seed=1)))


def test_bad_input():
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="between 0 and 1"):
            darken(frames, bad, np.random.default_rng(0))
    with pytest.raises(TypeError, match="uint8"):
        darken(frames.astype(np.float32), 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="C-contiguous"):
        darken_inplace(frames[:, ::2], 0.5, np.random.default_rng(0))
