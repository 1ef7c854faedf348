"""Embedding cache: `embed` once, train from the cache, checkpoints agree with the raw path; sweep."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from _tiny_backbones import audio_cfg, video_cfg
from _train_stores import SMALL, make_store
from dfew_mm.cli import main as cli_main
from dfew_mm.config import load_config
from dfew_mm.batch import collate
from dfew_mm.data.dataset import ClipDataset
from dfew_mm.data.embeddings import EmbeddingCache
from dfew_mm.data.splits import fold_splits
from dfew_mm.embed import build_cache
from dfew_mm.data.store import FeatureStore
from dfew_mm.errors import ConfigError
from dfew_mm.checkpoint import load_checkpoint
from dfew_mm.train import train

FROZEN = [*SMALL, "train.epochs=1", "model.video.freeze=all", "model.audio.freeze=all"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cached_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb_store")
    dfew, store = make_store(root, clips=25, silent=(4,), frames=6, face=32, audio=110)
    cfg = load_config("tiny", [f"data.store={store}", f"data.dfew_root={dfew}", *FROZEN])
    cache = build_cache(cfg, root / "cache", batch_size=8, progress=False)
    return dfew, store, cache


def test_model_trained_from_cache_gives_the_same_logits_on_raw_batches(cached_store, tmp_path):
    dfew, store, cache = cached_store
    cfg = load_config("tiny", [f"data.store={store}", f"data.dfew_root={dfew}", f"data.embedding_cache={cache}",
                               f"train.out_dir={tmp_path / 'run'}", *FROZEN])
    run = train(cfg)
    model, saved, _ = load_checkpoint(run / "best.pt")
    assert saved.data.embedding_cache == str(cache)
    feature_store = FeatureStore(store)
    test = fold_splits(feature_store, cfg.data, cfg.train.seed).test
    mods = list(cfg.model.modalities)
    raw = collate([ClipDataset(feature_store, test.ids, test.labels, cfg.data, mods, train=False)[i] for i in range(3)])
    cached = collate([ClipDataset(feature_store, test.ids, test.labels, cfg.data, mods, train=False,
                                  cache=EmbeddingCache(cache))[i] for i in range(3)])
    assert cached["video_emb"].shape == (3, 4, 512) and cached["audio_emb"].shape[0] == 3
    with torch.no_grad():
        assert torch.allclose(model(raw), model(cached), atol=2e-2)  # cache stores float16


def test_cache_rejects_other_settings(cached_store, tmp_path):
    dfew, store, cache = cached_store
    base = [f"data.store={store}", f"data.dfew_root={dfew}", f"data.embedding_cache={cache}", *FROZEN]
    with pytest.raises(ConfigError, match="model.video.freeze=all"):
        train(load_config("tiny", base + ["model.video.freeze=none", f"train.out_dir={tmp_path / 'a'}"]))
    with pytest.raises(ConfigError, match="frames: cache 4, config 6"):
        train(load_config("tiny", base + ["data.frames=6", f"train.out_dir={tmp_path / 'b'}"]))
    with pytest.raises(ConfigError, match="other settings"):
        build_cache(load_config("tiny", base + ["model.video.arch=resnet34"]), cache, progress=False)


def test_sweep_trains_every_subset_into_one_table(cached_store, tmp_path):
    dfew, store, cache = cached_store
    out = tmp_path / "sweep"
    assert cli_main(["sweep", "--config", "tiny", "--store", str(store), "--dfew-root", str(dfew), "--cache",
                     str(cache), "--folds", "1", "--modalities", "video,audio", "--out", str(out), *FROZEN]) == 0
    rows = (out / "sweep_summary.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["video", "audio", "video+audio"]
    assert (out / "video+audio" / "fold_1" / "test_metrics.json").is_file()


@pytest.mark.usefixtures("hub_offline")
@pytest.mark.parametrize("video,audio", [("clip", "wavlm"), ("siglip", "whisper")])
def test_strong_frozen_embeds_and_trains_from_the_cache_with_the_live_logits(video, audio, tmp_path):
    """configs/strong_frozen.yaml with tiny random-weight transformer and waveform encoders of its families."""
    dfew, store = make_store(tmp_path, clips=25, frames=6, face=32, audio=110)  # clips hold the waveform
    cfg = load_config("strong_frozen", [*SMALL, f"data.store={store}", f"data.dfew_root={dfew}", "train.epochs=1",
                                        "data.num_workers=0", "model.modalities=[video,pose,audio]", f"train.out_dir={tmp_path / 'run'}"])
    model_cfg = dataclasses.replace(cfg.model, video=video_cfg(video, freeze="all"),
                                    audio=audio_cfg(audio, freeze="all", max_length=112))
    cfg = dataclasses.replace(cfg, model=model_cfg)
    cache = build_cache(cfg, tmp_path / "cache", batch_size=8, progress=False)
    assert EmbeddingCache(cache).modalities == ["video", "audio"]
    run = train(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, embedding_cache=str(cache))))
    model, _, _ = load_checkpoint(run / "best.pt")
    feature_store = FeatureStore(store)
    test = fold_splits(feature_store, cfg.data, cfg.train.seed).test
    mods = list(cfg.model.modalities)
    raw = collate([ClipDataset(feature_store, test.ids, test.labels, cfg.data, mods, train=False,
                               model_cfg=model_cfg)[i] for i in range(3)])
    cached = collate([ClipDataset(feature_store, test.ids, test.labels, cfg.data, mods, train=False,
                                  cache=EmbeddingCache(cache), model_cfg=model_cfg)[i] for i in range(3)])
    assert "waveform" in raw and "waveform" not in cached  # the cache replaces the waveform reader
    with torch.no_grad():
        for m in ("video", "audio"):
            live, from_cache = model.encoders[m].tokens(raw), model.encoders[m].tokens(cached)
            assert torch.allclose(live[0], from_cache[0], atol=2e-2, rtol=2e-3)  # float16 storage
            assert torch.equal(live[1], from_cache[1]) and torch.allclose(live[2], from_cache[2])
        assert torch.allclose(model(raw), model(cached), atol=2e-2)
