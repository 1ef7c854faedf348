"""One training loop: AdamW + warmup/cosine, bf16 autocast and DDP on CUDA, gloo DDP on CPU,
honest model selection on a validation split carved from the training fold, exact resume.

Run directory (`train.out_dir`): config.yaml, environment.json, metrics.jsonl, tb/, last.pt,
best.pt (highest validation UAR, a tie to the lower validation cross-entropy), test_metrics.json and
test_predictions.csv (test fold, best and last, written at the end) and excluded_clips.csv when
`data.allow_missing` left clips out; with
`test_every_epoch`, also TEST_BY_EPOCH (the test fold after every epoch, for `cv --best-test-epoch`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset
from tqdm import tqdm

from dfew_mm.balance import Balancer, fit_member_weights
from dfew_mm.batch import batch_to, collate, mix, mixup_draw
from dfew_mm.checkpoint import (checkpoint_classes, load_weights, model_config_diff, read_checkpoint,
                                remove_stale_checkpoint_temps, rng_state, save_checkpoint, set_rng_state)
from dfew_mm.config import ExperimentConfig, git_sha, to_dict, write_run_record
from dfew_mm.data.dataset import ClipDataset
from dfew_mm.data.embeddings import EmbeddingCache
from dfew_mm.data.splits import check_originals, dataset_of, fold_splits
from dfew_mm.data.store import EXTRACTOR_VERSION, FeatureStore
from dfew_mm.device import autocast, set_deterministic
from dfew_mm.distributed import Dist, barrier, gather, setup_distributed
from dfew_mm.errors import ConfigError, DfewMMError
from dfew_mm.files import atomic_write_text
from dfew_mm.inference import Predictions, predict_logits
from dfew_mm.metrics import classification_metrics, format_metrics, json_safe
from dfew_mm.models import EmotionModel, build_model, load_pretrained
from dfew_mm.models.encoders import check_store_fits
from dfew_mm.predictions import modality_label, prediction_frame

log = logging.getLogger(__name__)
MAX_BAD_STEPS = 20  # consecutive non-finite losses before the run is declared diverged
METRICS_FILE = "metrics.jsonl"  # one line per epoch
TEST_BY_EPOCH = "test_by_epoch.jsonl"  # one line per epoch: the test fold's metrics, never used to select
MIXUP_STREAM = 2  # the mixup generator's stream beside the samples' (dfew_mm.data.dataset)


# -- data ---------------------------------------------------------------------------------------
class BalancedSampler(Sampler[int]):
    """Class-balanced sampling with replacement, seeded per epoch and sharded over ranks."""

    def __init__(self, labels: np.ndarray, rank: int, world: int, seed: int):
        counts = np.bincount(labels).astype(np.float64)
        self.weights = torch.as_tensor(1.0 / counts[labels])
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, 0
        self.per_rank = math.ceil(len(labels) / world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        draw = torch.multinomial(self.weights, self.per_rank * self.world, replacement=True, generator=g)
        return iter(draw[self.rank::self.world].tolist())


def make_loaders(cfg: ExperimentConfig, store: FeatureStore, splits, d: Dist, cache: EmbeddingCache | None):
    mods, seed = list(cfg.model.modalities), cfg.train.seed
    train_set = ClipDataset(store, splits.train.ids, splits.train.labels, cfg.data, mods, train=True, seed=seed,
                            cache=cache, model_cfg=cfg.model)
    if cfg.train.class_balance == "sampler":
        sampler = BalancedSampler(splits.train.labels, d.rank, d.world, seed)
    else:
        sampler = DistributedSampler(train_set, d.world, d.rank, shuffle=True, seed=seed, drop_last=d.world > 1)
    common = dict(num_workers=cfg.data.num_workers, collate_fn=collate, pin_memory=d.device.type == "cuda",
                  persistent_workers=cfg.data.num_workers > 0)
    # Each loader draws its workers' seeds from a generator of its own: drawn from the global one, as by
    # default, they would shift the model's random stream (dropout) with every start of persistent workers,
    # so a resumed run, whose workers start again, would leave the uninterrupted one's path.
    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(seed + d.rank)

    train_loader = DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=False,
                              generator=seeded(), **common)

    def eval_loader(split) -> DataLoader:  # every rank evaluates a disjoint shard; results are gathered
        full = ClipDataset(store, split.ids, split.labels, cfg.data, mods, train=False, seed=seed, cache=cache,
                           model_cfg=cfg.model)
        return DataLoader(Subset(full, range(d.rank, len(full), d.world)), batch_size=cfg.train.batch_size,
                          shuffle=False, generator=seeded(), **common)

    return train_set, train_loader, eval_loader(splits.val), eval_loader(splits.test)


# -- evaluation ---------------------------------------------------------------------------------
def evaluate_loader(model: EmotionModel, loader: DataLoader, d: Dist, amp: bool) -> tuple[dict, Predictions]:
    """Metrics and predictions over the union of all ranks' shards (the shared inference loop)."""
    parts = gather(predict_logits(model, loader, d.device, amp), d)
    preds = Predictions.concat(parts)
    return classification_metrics(preds.labels, preds.preds, model.classes), preds


def mean_nll(preds: Predictions) -> float:
    """Mean cross-entropy (nats) of the predictions against their labels; inf without clips."""
    if not len(preds.labels):
        return math.inf
    return float(torch.nn.functional.cross_entropy(torch.from_numpy(preds.logits), torch.from_numpy(preds.labels)))


def test_predictions(cfg: ExperimentConfig, store: FeatureStore, run_dir: Path, classes: tuple[str, ...],
                     by_checkpoint: dict[str, Predictions]) -> pd.DataFrame:
    """The test fold's per-clip predictions of each checkpoint, in the `dfew_mm evaluate` file format."""
    mods = modality_label(cfg.model.modalities)
    return pd.concat([prediction_frame(p.clip_ids, p.labels, p.probs, store.manifest, classes, modalities=mods,
                                       perturbation="none", darken=0.0, run=run_dir.name, trained_modalities=mods,
                                       fold=cfg.data.fold, split="test", checkpoint=name)
                      for name, p in by_checkpoint.items()], ignore_index=True)


def keep_epochs_before(path: Path, epoch: int) -> None:
    """Drop the lines of `epoch` and later from a per-epoch .jsonl file, and a line cut short: those of epochs a
    killed run wrote before saving their last.pt, which the resumed run trains and writes again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["epoch"] < epoch:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by a kill
            continue
    if kept != lines:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


# -- optimiser ----------------------------------------------------------------------------------
def make_optimizer(model: EmotionModel, cfg: ExperimentConfig, steps_per_epoch: int):
    """AdamW with a lower rate for pretrained encoders, per-modality lr factors and weight decay
    (`train.encoder_lr_scale`, `train.encoder_weight_decay`), no decay on biases and norms; warmup +
    cosine. Each param group records its modality (None for fusion and heads) for OGM-GE."""
    t = cfg.train
    for key, table in (("encoder_lr_scale", t.encoder_lr_scale), ("encoder_weight_decay", t.encoder_weight_decay)):
        unknown = [m for m in table if m not in model.modalities]
        if unknown:
            raise ConfigError(f"train.{key} names {unknown}, which this model does not have "
                              f"(its modalities: {', '.join(model.modalities)})")
    slow = {id(p) for p in model.pretrained_parameters()}
    modality_of = {id(p): m for m in model.modalities for p in model.encoder_parameters(m)}
    groups: dict[tuple[str, bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((modality_of.get(id(p), ""), id(p) in slow, p.ndim >= 2), []).append(p)

    def options(modality: str, is_slow: bool, decay: bool) -> dict:
        lr = t.lr * (t.backbone_lr_scale if is_slow else 1.0) * t.encoder_lr_scale.get(modality, 1.0)
        return {"lr": lr, "weight_decay": t.encoder_weight_decay.get(modality, t.weight_decay) if decay else 0.0,
                "modality": modality or None}

    # the fused kernel: one pass over all parameters; on CPU the optimiser step of the tiny config
    # (11M parameters, 4 clips a batch) takes a third of the time of the default foreach step
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW([{"params": ps, **options(*key)} for key, ps in sorted(groups.items())],
                            lr=t.lr, betas=(0.9, 0.999), fused=fused)
    total = max(1, t.epochs * steps_per_epoch)
    warmup = min(int(t.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """(C,) inverse class frequency, mean 1 over the classes present."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


# -- the loop -----------------------------------------------------------------------------------
@dataclass
class Run:
    """One training run between its sections: set-up, epochs (train, then validate and save), test fold."""

    cfg: ExperimentConfig
    d: Dist
    run_dir: Path
    store: FeatureStore
    splits: Any
    extractor: int | None  # extractor version of the store
    train_set: ClipDataset
    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader
    model: EmotionModel
    opt: torch.optim.Optimizer
    sched: Any
    balance: Balancer
    net: Any = None  # the model, DDP-wrapped across processes
    step_fn: Any = None  # `net` as one training step calls it: compiled with train.compile
    start_epoch: int = 0
    best: dict = field(default_factory=lambda: {"uar": -1.0, "epoch": -1})
    writer: Any = None

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"


def train(cfg: ExperimentConfig, resume: bool = False, stop_after_epochs: int | None = None,
          test_every_epoch: bool = False) -> Path:
    """Train one fold; returns the run directory. `stop_after_epochs` ends this call early
    (for time-limited job slots); `resume=True` continues from the run directory's last.pt.
    `test_every_epoch` also evaluates the test fold after every epoch into TEST_BY_EPOCH, for the
    optimistic best-test-epoch figure; training, selection and the random streams stay as without it."""
    run = set_up(cfg, resume)
    end_epoch = cfg.train.epochs if stop_after_epochs is None else min(cfg.train.epochs,
                                                                       run.start_epoch + stop_after_epochs)
    for epoch in range(run.start_epoch, end_epoch):
        seen, loss_sum, train_s, skipped = train_epoch(run, epoch)
        validate_and_save(run, epoch, seen, loss_sum, train_s, skipped, test_every_epoch)
    if end_epoch == cfg.train.epochs:  # the test fold, touched only once training is complete
        test_fold(run, end_epoch)
    if run.writer is not None:
        run.writer.close()
    return run.run_dir


def set_up(cfg: ExperimentConfig, resume: bool) -> Run:
    """Checks, seeds, data, model, optimiser; the saved state of last.pt with `resume`."""
    if not cfg.data.store:
        raise ConfigError("no feature store given: pass --store FEATURES (data.store=FEATURES)")
    for key in ("epochs", "batch_size", "grad_accum"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"train.{key}={getattr(cfg.train, key)} must be at least 1")
    set_deterministic(cfg.train.deterministic)  # before any CUDA work (cuBLAS reads its setting once)
    d = setup_distributed(cfg.train.device)
    run_dir = Path(cfg.train.out_dir)
    last_path = run_dir / "last.pt"
    if resume and not last_path.is_file():
        raise DfewMMError(f"cannot resume: {last_path} does not exist")
    if not resume and last_path.is_file():
        raise DfewMMError(f"{run_dir} already holds a run: resume it with --resume {run_dir}, "
                          "or choose another train.out_dir")
    if d.main and remove_stale_checkpoint_temps(run_dir):
        log.info("removed temporary files of checkpoint saves that were killed in %s", run_dir)
    torch.manual_seed(cfg.train.seed + d.rank)
    np.random.seed(cfg.train.seed + d.rank)
    random.seed(cfg.train.seed + d.rank)

    store = FeatureStore(cfg.data.store)
    extractor = store.extractor_version()
    if extractor is not None and extractor < EXTRACTOR_VERSION:
        log.warning("%s comes from extractor version %d (now %d), whose features depend on the order clips were "
                    "extracted in: re-extract it for exactly reproducible runs (docs/reproducibility.md)",
                    store.path, extractor, EXTRACTOR_VERSION)
    dataset = dataset_of(cfg.data)
    splits = fold_splits(store, cfg.data, cfg.train.seed)
    check_originals(store, [*splits.train.ids, *splits.val.ids, *splits.test.ids], cfg.model, cfg.model.modalities,
                    f"fold {cfg.data.fold}", dataset)
    cache = EmbeddingCache(cfg.data.embedding_cache) if cfg.data.embedding_cache else None
    if cache is None:  # before the first epoch: faces large enough, the waveform there if read
        check_store_fits(cfg.model, cfg.data.face_size, store.array_shapes(splits.train.ids[0]))
    else:
        cache.check(cfg)
        cache.verify([*splits.train.ids, *splits.val.ids, *splits.test.ids])
        if cfg.data.augment:  # cached tokens are fixed; flipping only the modalities read would break the pairing
            log.info("no augmentation from an embedding cache: training reads fixed tokens")
    train_set, train_loader, val_loader, test_loader = make_loaders(cfg, store, splits, d, cache)
    log.info("fold %d: %d train, %d val, %d test clips; modalities %s; device %s x%d", cfg.data.fold,
             len(splits.train.ids), len(splits.val.ids), len(splits.test.ids), ",".join(cfg.model.modalities),
             d.device, d.world)

    model = build_model(cfg.model, dataset.classes)
    if not resume:
        load_pretrained(model, cfg.model)
        if cache is not None:  # the frozen encoders that made the cache, so checkpoints match it
            for name, state in cache.encoder_state().items():
                if name in model.encoders:
                    model.encoders[name].load_state_dict(state, strict=True)
    model.modality_dropout = cfg.train.modality_dropout
    model.to(d.device)
    if d.device.type == "cuda" and cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch)
    weights = (class_weights(splits.train.labels, model.num_classes).to(d.device)
               if cfg.train.class_balance == "weighted_loss" else None)
    balance = Balancer(model, cfg.train, weights)  # fused + unimodal losses, OGM-GE (dfew_mm/balance.py)
    run = Run(cfg, d, run_dir, store, splits, extractor, train_set, train_loader, val_loader, test_loader, model,
              opt, sched, balance)
    if resume:
        restore(run, dataset.title)
    run.net = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None) \
        if d.world > 1 else model
    run.step_fn = torch.compile(run.net) if cfg.train.compile else run.net
    if d.main:
        write_run_record(run_dir, cfg)
        for name in (METRICS_FILE, TEST_BY_EPOCH):
            keep_epochs_before(run_dir / name, run.start_epoch)
        if len(splits.excluded):
            atomic_write_text(run_dir / "excluded_clips.csv", splits.excluded.to_csv(index=False))
        from torch.utils.tensorboard import SummaryWriter
        run.writer = SummaryWriter(str(run_dir / "tb"))
    return run


def restore(run: Run, dataset_title: str) -> None:
    """Weights, optimiser, scheduler, epoch, best and random state from last.pt (exact resume)."""
    model, d = run.model, run.d
    ckpt = read_checkpoint(run.last_path, "cpu")
    diff = model_config_diff(ckpt["config"]["model"], to_dict(run.cfg)["model"])
    if diff:
        raise DfewMMError(f"{run.last_path} was trained with a different model configuration: " + "; ".join(diff))
    saved_classes = checkpoint_classes(ckpt, run.cfg)
    if saved_classes != model.classes:
        raise DfewMMError(f"{run.last_path} was trained on the classes {', '.join(saved_classes)}; "
                          f"{dataset_title} has {', '.join(model.classes)}")
    load_weights(model, ckpt["model"], run.last_path)
    run.opt.load_state_dict(ckpt["optimizer"])
    run.sched.load_state_dict(ckpt["scheduler"])
    run.start_epoch, run.best = ckpt["meta"]["epoch"] + 1, ckpt["meta"]["best"]
    began_on = ckpt["meta"].get("extractor_version")
    if None not in (began_on, run.extractor) and began_on != run.extractor:
        log.warning("the run began on a store of extractor version %s and resumes on version %s: its epochs "
                    "saw different features", began_on, run.extractor)
    if len(ckpt["rng"]) != d.world:
        log.warning("resuming with %d processes, saved with %d: training continues, but not bit-exactly",
                    d.world, len(ckpt["rng"]))
    set_rng_state(ckpt["rng"][d.rank % len(ckpt["rng"])])
    log.info("resumed %s at epoch %d (best val UAR %.3f at epoch %d)", run.last_path, run.start_epoch,
             run.best["uar"], run.best["epoch"])


def train_epoch(run: Run, epoch: int) -> tuple[int, float, float, int]:
    """One epoch of training: (clips seen, summed loss, seconds, non-finite steps skipped) of this rank."""
    cfg, d, model, opt = run.cfg, run.d, run.model, run.opt
    run.net.train()
    run.train_set.set_epoch(epoch)
    run.train_loader.sampler.set_epoch(epoch)
    tic, seen, loss_sum, bad_steps, skipped = time.perf_counter(), 0, 0.0, 0, 0
    bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch",
               disable=None if d.main else True, leave=False)
    for i, batch in enumerate(bar):
        batch = batch_to(batch, d.device)
        mixed = None
        if cfg.train.mixup > 0:  # partners and lam from (seed, rank, epoch, step): exact on resume
            order, lam = mixup_draw(cfg.train.mixup, [cfg.train.seed, d.rank, epoch, i, MIXUP_STREAM],
                                    len(batch["label"]))
            order = order.to(d.device)
            batch, mixed = mix(batch, order, lam), (batch["label"][order], lam)
        boundary = (i + 1) % cfg.train.grad_accum == 0 or i + 1 == len(run.train_loader)
        sync = run.net.no_sync() if d.world > 1 and not boundary else nullcontext()
        with sync, autocast(d.device, cfg.train.amp):
            out = run.step_fn(batch, return_unimodal=True) if run.balance.wants_unimodal else run.step_fn(batch)
            loss = run.balance.loss(out, batch["label"], mixed)
        # NaN guard: every rank must agree to skip, or DDP's gradient all-reduce would hang
        finite = torch.isfinite(loss.detach()).float()
        if d.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            bad_steps, skipped = bad_steps + 1, skipped + 1
            opt.zero_grad(set_to_none=True)
            if bad_steps > MAX_BAD_STEPS:
                raise DfewMMError(f"training diverged: {bad_steps} consecutive non-finite losses; "
                                  "lower train.lr or disable train.amp")
            continue
        bad_steps = 0
        with sync:
            (loss / cfg.train.grad_accum).backward()
        if boundary:
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            run.balance.before_step(model, opt, d.world)  # OGM-GE: per-modality step sizes
            opt.step()
            opt.zero_grad(set_to_none=True)
            run.sched.step()
        seen += len(batch["clip_id"])
        loss_sum += loss.item() * len(batch["clip_id"])
        bar.set_postfix(loss=f"{loss.item():.3f}", clips_s=f"{seen * d.world / (time.perf_counter() - tic):.1f}")
    return seen, loss_sum, time.perf_counter() - tic, skipped


def validate_and_save(run: Run, epoch: int, seen: int, loss_sum: float, train_s: float, skipped: int,
                      test_every_epoch: bool) -> None:
    """Validation (late/both fusion: member weights from validation first), model selection, the epoch's
    metrics line and checkpoints."""
    cfg, d, model = run.cfg, run.d, run.model
    totals = gather((seen, loss_sum), d)
    seen_all = sum(s for s, _ in totals)
    weights_record = fit_member_weights(model, run.val_loader, d, cfg.train.amp)
    val, val_preds = evaluate_loader(model, run.val_loader, d, cfg.train.amp)
    val["nll"] = mean_nll(val_preds)
    # a tie in UAR (frequent on a small validation split, e.g. several epochs at 1.0) goes to the lower
    # cross-entropy, not to the earliest epoch; checkpoints from before the tie-break carry no "nll"
    improved = (run.best["epoch"] < 0 or val["uar"] > run.best["uar"]
                or (val["uar"] == run.best["uar"] and val["nll"] < run.best.get("nll", math.inf)))
    if improved:
        run.best = {"uar": val["uar"], "epoch": epoch, "nll": val["nll"]}
    record = {"epoch": epoch, "train_loss": sum(ls for _, ls in totals) / max(seen_all, 1),
              "lr": run.opt.param_groups[-1]["lr"], "clips_per_s": seen_all / train_s, "nan_skipped": skipped,
              "val_uar": val["uar"], "val_war": val["war"], "val_macro_f1": val["macro_f1"], "val_nll": val["nll"],
              "best_epoch": run.best["epoch"],
              **run.balance.epoch_record(), **weights_record}
    if test_every_epoch:  # drawn from a saved state and restored: the run itself stays the same
        saved = rng_state()
        test_now, _ = evaluate_loader(model, run.test_loader, d, cfg.train.amp)
        set_rng_state(saved)
    rng = gather(rng_state(), d)
    if d.main:
        log.info("epoch %d: loss %.4f, val %s, %.1f clips/s", epoch + 1, record["train_loss"],
                 format_metrics(val), record["clips_per_s"])
        meta = {"epoch": epoch, "best": run.best, "val": val, "git_sha": git_sha(), "extractor_version": run.extractor}
        payload = {"model": model.state_dict(), "config": to_dict(cfg), "meta": meta, "classes": list(model.classes),
                   "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(), "rng": rng}
        # the epoch's lines before last.pt: a kill in between redoes the epoch, which writes the lines again
        with open(run.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")
        if test_every_epoch:
            with open(run.run_dir / TEST_BY_EPOCH, "a") as f:
                f.write(json.dumps(json_safe({"epoch": epoch, **test_now})) + "\n")
        if improved:
            save_checkpoint(run.best_path, {k: payload[k] for k in ("model", "config", "meta", "classes")})
        save_checkpoint(run.last_path, payload)
        for key in ("train_loss", "lr", "clips_per_s", "val_uar", "val_war", "val_macro_f1"):
            run.writer.add_scalar(key, record[key], epoch)
    barrier(d)


def test_fold(run: Run, end_epoch: int) -> None:
    """The test fold with the last weights and with best.pt's: test_metrics.json, test_predictions.csv."""
    cfg, d, model = run.cfg, run.d, run.model
    last_metrics, last_preds = evaluate_loader(model, run.test_loader, d, cfg.train.amp)
    best_ckpt = read_checkpoint(run.best_path, "cpu")
    load_weights(model, best_ckpt["model"], run.best_path)
    best_metrics, best_preds = evaluate_loader(model, run.test_loader, d, cfg.train.amp)
    results = {"last": {"epoch": end_epoch - 1, **last_metrics},
               "best": {"epoch": best_ckpt["meta"]["epoch"], **best_metrics},
               "dataset": cfg.data.dataset, "classes": list(model.classes)}
    if d.main:
        atomic_write_text(run.run_dir / "test_metrics.json", json.dumps(json_safe(results), indent=2) + "\n")
        atomic_write_text(run.run_dir / "test_predictions.csv", test_predictions(
            cfg, run.store, run.run_dir, model.classes, {"best": best_preds, "last": last_preds}).to_csv(index=False))
        log.info("test fold %d: best (epoch %d) %s | last %s", cfg.data.fold, results["best"]["epoch"] + 1,
                 format_metrics(results["best"]), format_metrics(results["last"]))
    barrier(d)
