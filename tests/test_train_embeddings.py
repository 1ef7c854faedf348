"""Embedding cache: `embed` once, train from the cache, checkpoints agree with the raw path; sweep."""

from __future__ import annotations

import pytest
import torch

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
