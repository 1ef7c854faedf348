"""The audio modality's data side on a small real store: training augmentation (SpecAugment masks, waveform
gain) exact per (seed, epoch, clip), evaluation never augmented, the evaluation window (first, centre, the
whole clip as several windows) and per-utterance normalisation; and the encoder over several windows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from _tiny_backbones import audio_cfg
from _train_stores import make_store
from dfew_mm.batch import collate
from dfew_mm.config import load_config
from dfew_mm.constants import AST_FBANK_MEAN, AST_FBANK_STD
from dfew_mm.data.dataset import ClipDataset
from dfew_mm.data.store import FeatureStore
from dfew_mm.errors import ConfigError
from dfew_mm.models import build_model
from dfew_mm.models.encoders.audio import AudioEncoder, normalise_utterance
from dfew_mm.models.encoders.base import Augmentation

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WINDOW = 100  # data.audio_frames of these tests; the store's clips hold 150 frames, clip 3 only 60
# The settings these tests start from, whatever tiny ships: the first window, no normalisation, SpecAugment on
PINNED = ["model.audio.eval_window=first", "model.audio.normalise=dataset", "model.audio.time_masks=2",
          "model.audio.freq_masks=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    dfew, path = make_store(tmp_path_factory.mktemp("audio_store"), clips=12, silent=(7,), frames=6, face=32,
                            audio=150)
    short = FeatureStore(path)["3"]
    short["audio"] = short["audio"][:60]
    FeatureStore(path).write_clip("3", short)
    return dfew, path


def dataset(store, train: bool, ids=("1", "2"), seed: int = 1, **over) -> ClipDataset:
    dfew, path = store
    cfg = load_config("tiny", [f"data.store={path}", f"data.dfew_root={dfew}", "data.face_size=32", "data.frames=4",
                               f"data.audio_frames={WINDOW}", "model.audio.max_length=112", *PINNED,
                               *[f"{k}={v}" for k, v in over.items()]])
    return ClipDataset(FeatureStore(path), list(ids), [0] * len(ids), cfg.data, ["audio"], train=train, seed=seed,
                       model_cfg=cfg.model)


def sample(ds: ClipDataset, index: int = 0, epoch: int = 0) -> dict:
    ds.set_epoch(epoch)
    return ds[index]


# -- training augmentation --------------------------------------------------------------------------
def test_specaugment_is_exact_per_seed_epoch_and_clip_and_changes_with_the_epoch(store):
    aug = dataset(store, True, **{"data.augment": "true"})
    plain = dataset(store, True, **{"data.augment": "false"})
    a = sample(aug, 0, epoch=2)
    assert torch.equal(a["audio"], sample(dataset(store, True, **{"data.augment": "true"}), 0, epoch=2)["audio"])
    assert not torch.equal(a["audio"], sample(aug, 0, epoch=3)["audio"])
    assert not torch.equal(a["audio"], sample(aug, 1, epoch=2)["audio"])  # another clip, other masks
    assert not torch.equal(a["audio"], sample(dataset(store, True, seed=2, **{"data.augment": "true"}), 0, 2)["audio"])
    # the same window as without augmentation (its own stream): only masked frames and bins differ,
    # and they hold the window's mean
    b = sample(plain, 0, epoch=2)
    assert a["audio_start"] == b["audio_start"] and torch.equal(a["audio_mask"], b["audio_mask"])
    changed = a["audio"] != b["audio"]  # (F, 128)
    fill = b["audio"][b["audio_mask"]].mean()
    assert changed.any() and torch.allclose(a["audio"][changed], fill.expand(int(changed.sum())))
    frames, bins = changed.all(1), changed.all(0)  # whole frames (time masks), whole bins (frequency masks)
    assert torch.equal(changed, frames[:, None] | bins[None, :])
    cfg = aug.encoder_cfgs["audio"]
    assert frames.sum() <= cfg.time_masks * cfg.time_mask_width and bins.sum() <= cfg.freq_masks * cfg.freq_mask_width


def test_waveform_gain_is_drawn_from_the_sample_generator():
    cfg = audio_cfg("hubert", gain_db=6.0)
    wave = torch.linspace(-0.5, 0.5, 1600)
    part = {"audio": torch.zeros(10, 128), "audio_mask": torch.ones(10, dtype=torch.bool), "audio_start": 0.0,
            "waveform": wave, "waveform_mask": torch.ones(1600, dtype=torch.bool)}
    one = AudioEncoder.augment(cfg, part, Augmentation(False, np.random.default_rng([1, 0, 5, 1])))
    again = AudioEncoder.augment(cfg, part, Augmentation(False, np.random.default_rng([1, 0, 5, 1])))
    other = AudioEncoder.augment(cfg, part, Augmentation(False, np.random.default_rng([1, 1, 5, 1])))
    assert torch.equal(one["waveform"], again["waveform"]) and not torch.equal(one["waveform"], other["waveform"])
    gain = one["waveform"][-1] / wave[-1]
    assert 10 ** (-6 / 20) <= gain <= 10 ** (6 / 20) and torch.allclose(one["waveform"], wave * gain)
    assert torch.equal(one["audio"], part["audio"])  # a waveform encoder does not read the filterbank


def test_evaluation_is_never_augmented(store):
    for window in ("first", "clip"):
        on = dataset(store, False, **{"data.augment": "true", "model.audio.eval_window": window})
        off = dataset(store, False, **{"model.audio.eval_window": window})
        assert on.augmentation(0) is None
        for epoch in (0, 1):
            a, b = sample(on, 0, epoch), sample(off, 0, epoch)
            assert all(torch.equal(a[k], b[k]) for k in ("audio", "audio_mask", "audio_start")
                       if isinstance(a[k], torch.Tensor))


# -- the evaluation window --------------------------------------------------------------------------
def test_the_evaluation_window_first_centre_or_the_whole_clip(store):
    raw = torch.from_numpy(FeatureStore(store[1])["1"]["audio"].astype(np.float32))  # (150, 128)
    first = sample(dataset(store, False))
    assert torch.equal(first["audio"], raw[:WINDOW]) and first["audio_start"] == 0.0
    centre = sample(dataset(store, False, **{"model.audio.eval_window": "centre"}))
    assert torch.equal(centre["audio"], raw[25:25 + WINDOW]) and centre["audio_start"] == 0.25
    ds = dataset(store, False, ids=("1", "3", "7"), **{"model.audio.eval_window": "clip",
                                                       "model.audio.eval_windows": 3})
    whole = sample(ds)  # three windows from the first frame to the last
    assert whole["audio"].shape == (3, WINDOW, 128) and whole["audio_start"].tolist() == [0.0, 0.25, 0.5]
    assert all(torch.equal(whole["audio"][k], raw[25 * k:25 * k + WINDOW]) for k in range(3))
    short = sample(ds, 1)  # 60 frames: one window, the repeats masked out
    assert short["audio_mask"].sum(1).tolist() == [60, 0, 0]
    silent = sample(ds, 2)
    assert silent["audio"].shape == (3, WINDOW, 128) and not silent["audio_mask"].any()
    assert torch.equal(sample(ds)["audio"], whole["audio"])  # deterministic


@pytest.mark.parametrize("arch", ["fbank_cnn", "ast"])
def test_whole_clip_tokens_are_each_window_encoded_alone(store, arch):
    ds = dataset(store, False, ids=("1", "3", "7"), **{"model.audio.eval_window": "clip"})
    batch = collate([ds[i] for i in range(3)])
    enc = AudioEncoder(audio_cfg(arch, max_length=112)).eval()
    with torch.no_grad():
        tokens, mask, times = enc.tokens(batch)
        n = enc.n_tokens
        assert tokens.shape == (3, 3 * n, enc.output_dim) and mask.shape == times.shape == (3, 3 * n)
        for k in range(3):
            alone, alone_mask, alone_times = enc(batch["audio"][:, k], batch["audio_mask"][:, k],
                                                 batch["audio_start"][:, k])
            part = slice(k * n, (k + 1) * n)
            assert torch.equal(mask[0, part], alone_mask[0]) and torch.allclose(times[:, part], alone_times)
            assert torch.allclose(tokens[0, part], alone[0], atol=1e-5)
    assert mask[0].all() and mask[1, :n].any() and not mask[1, n:].any() and not mask[2].any()


def test_a_model_evaluates_the_whole_clip_and_trains_on_one_window(store):
    over = {"model.audio.arch": "fbank_cnn", "model.audio.num_layers": 3, "model.audio.eval_window": "clip"}
    model = build_model(load_config("tiny", ["model.modalities=[audio]", f"data.audio_frames={WINDOW}",
                                             "model.audio.max_length=112",
                                             *[f"{k}={v}" for k, v in over.items()]]).model)
    evaluation = collate([sample(dataset(store, False, ids=("1", "3", "7"), **over), i) for i in range(3)])
    training = collate([sample(dataset(store, True, ids=("1", "3"), **over), i) for i in range(2)])
    model.eval()
    with torch.no_grad():
        logits = model(evaluation)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all() and torch.equal(logits, model(evaluation))
    model.train()
    model(training).sum().backward()
    assert all(p.grad is not None for p in model.encoders["audio"].parameters())


# -- normalisation and settings -----------------------------------------------------------------------
def test_utterance_normalisation_removes_level_and_spectral_colour():
    rng = np.random.default_rng(0)
    fbank = (rng.standard_normal((150, 128)) * np.linspace(1, 4, 128) - 6).astype(np.float16)
    out = normalise_utterance(fbank)
    assert np.allclose(out.mean(0), AST_FBANK_MEAN, atol=1e-3) and np.allclose(out.std(0), AST_FBANK_STD, atol=1e-2)
    louder = (fbank.astype(np.float32) + 3.0 + np.linspace(0, 2, 128)).astype(np.float32)  # gain and tilt
    assert np.allclose(normalise_utterance(louder), out, atol=1e-2)
    assert normalise_utterance(np.zeros((0, 128), np.float16)).shape == (0, 128)
    # level: one mean and std for the clip; a gain goes, the spectral shape (here a tilt) stays
    level = normalise_utterance(fbank, per_bin=False)
    assert np.isclose(level.mean(), AST_FBANK_MEAN, atol=1e-3) and np.isclose(level.std(), AST_FBANK_STD, atol=1e-2)
    assert np.allclose(normalise_utterance(fbank.astype(np.float32) + 3.0, per_bin=False), level, atol=1e-2)
    tilted = normalise_utterance(louder, per_bin=False)
    assert tilted[:, -8:].mean() - tilted[:, :8].mean() > level[:, -8:].mean() - level[:, :8].mean() + 1.0


def test_utterance_normalisation_in_samples(store):
    raw = FeatureStore(store[1])["1"]["audio"]
    ds = dataset(store, False, **{"model.audio.normalise": "utterance"})
    assert torch.allclose(sample(ds)["audio"], torch.from_numpy(normalise_utterance(raw)[:WINDOW]))


@pytest.mark.parametrize("override,expected", [
    ("model.audio.eval_window=whole", "first, centre, clip"),
    ("model.audio.normalise=speaker", "dataset, utterance, level"),
    ("model.audio.eval_windows=0", "eval_windows"),
    ("model.audio.freq_mask_width=200", "freq_mask_width"),
])
def test_audio_settings_are_checked(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config("tiny", [override])


def test_fbank_cnn_settings_are_checked():
    with pytest.raises(ConfigError, match="num_layers=1"):
        AudioEncoder(dataclasses.replace(audio_cfg("fbank_cnn"), num_layers=1))
    with pytest.raises(ConfigError, match="arch_kwargs.lstm: fbank_cnn takes gru"):
        AudioEncoder(dataclasses.replace(audio_cfg("fbank_cnn"), arch_kwargs={"lstm": True}))


@pytest.mark.parametrize("gru", [True, False])
def test_fbank_cnn_tokens_ignore_what_follows_the_clip(gru):
    """Garbage after a clip's end changes none of its valid tokens."""
    enc = AudioEncoder(dataclasses.replace(audio_cfg("fbank_cnn"), arch_kwargs={"gru": gru})).eval()
    assert (enc.backbone.gru is not None) == gru
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(2, 160, 128, generator=g) * 4 - 4
    mask = torch.ones(2, 160, dtype=torch.bool)
    mask[0, 96:] = False  # clip 0 ends at 0.96 s, on a step boundary of the network
    noisy = audio + 20.0 * torch.randn(2, 160, 128, generator=g) * ~mask.unsqueeze(-1)
    with torch.no_grad():
        a, valid, _ = enc(audio, mask)
        b, _, _ = enc(noisy, mask)
    assert valid[0, :3].all() and not valid[0, -1]
    assert torch.allclose(a[valid], b[valid], atol=1e-5)


def test_fbank_cnn_gru_runs_over_the_real_steps_only():
    """A 0.96 s clip in a 0.96 s window and in a 1.6 s window (padded): the GRU's outputs over the clip's steps
    agree, so its backward direction starts at the clip's end, not at the window's."""
    short = AudioEncoder(dataclasses.replace(audio_cfg("fbank_cnn"), max_length=96)).eval()
    long = AudioEncoder(dataclasses.replace(audio_cfg("fbank_cnn"), max_length=160)).eval()
    long.load_state_dict(short.state_dict())
    outputs = []
    for enc in (short, long):
        enc.backbone.gru.register_forward_hook(lambda module, args, out: outputs.append(
            torch.nn.utils.rnn.pad_packed_sequence(out[0], batch_first=True)[0]))
    clip = torch.randn(1, 96, 128, generator=torch.Generator().manual_seed(1)) * 4 - 4
    with torch.no_grad():
        short(clip, torch.ones(1, 96, dtype=torch.bool))
        long(torch.cat([clip, torch.zeros(1, 64, 128)], 1), torch.arange(160).unsqueeze(0) < 96)
    steps = 96 >> short.cfg.num_layers  # each block halves time
    assert outputs[0].shape == outputs[1].shape == (1, steps, short.output_dim)
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
