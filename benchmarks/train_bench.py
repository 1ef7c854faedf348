"""Training throughput (clips/s): end to end (store -> DataLoader -> step) versus compute only.

    python benchmarks/train_bench.py                  # configs/tiny.yaml on CPU
    python benchmarks/train_bench.py --configs strong --steps 1 --rounds 1 --clips 4 train.batch_size=2   # on CPU
    python benchmarks/train_bench.py --cuda           # + default.yaml and strong.yaml variants on the GPU
    python benchmarks/train_bench.py model.fusion.mode=transformer train.aux_weight=0   # another recipe

Each step is the training step of train.py: the config's loss (fused head plus unimodal heads,
dfew_mm.balance) and optimiser. The floor is the same model's step on one batch already in device
memory (no data loading), measured in the same run; the ratio end-to-end / compute-only (last
line) says how much the input pipeline costs. On CUDA the default config (ResNet-18 at 112 px, 16 frames, pose, AST,
fusion) is timed in bf16 and fp32, with and without channels_last and torch.compile; its face branch alone
(ResNet-18, 112 px, 16 frames) in bf16; and strong.yaml (SigLIP B/16 at 224 px, WavLM Base+ on the
waveform, pose, blendshapes) in bf16, eager and compiled. Weights are random (pretrained=false): the
speed is the same. The random store holds every array of store format 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from dfew_mm.balance import Balancer
from dfew_mm.config import load_config
from dfew_mm.batch import batch_to, collate
from dfew_mm.data.dataset import ClipDataset
from dfew_mm.data.store import FeatureStore
from dfew_mm.models import build_model
from dfew_mm.train import make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_bench import write_random_store  # noqa: E402


def step(model, balance: Balancer, opt, batch, amp: bool) -> None:
    """One training step as train.py takes it: the config's loss (fused + unimodal heads), OGM-GE."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = model(batch, return_unimodal=True) if balance.wants_unimodal else model(batch)
        loss = balance.loss(out, batch["label"])
    loss.backward()
    balance.before_step(model, opt)
    opt.step()
    opt.zero_grad(set_to_none=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(cfg, store: FeatureStore, ids: list[str], device: torch.device, amp: bool, channels_last: bool,
            compile_: bool, steps: int, workers: int, rounds: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_ else model
    opt, _ = make_optimizer(model, cfg, steps)
    balance = Balancer(model, cfg.train)
    labels = np.arange(len(ids)) % 7
    dataset = ClipDataset(store, ids, labels, cfg.data, cfg.model.modalities, train=True, model_cfg=cfg.model)
    # One endless epoch: a small random store would otherwise end an epoch every few batches, and each
    # new epoch waits for its first batches (a DFEW fold's epoch is ~290 batches, where that wait is noise).
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**9)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda", drop_last=True)
    batches = iter(loader)  # one endless epoch (the sampler's)
    fixed = batch_to(next(batches), device)
    for _ in range(3):  # warm-up: kernels, compile, allocator
        step(net, balance, opt, fixed, amp)
    compute = end_to_end = 0.0
    for _ in range(rounds):  # alternate, best of each: other load on the machine hits both alike
        sync(device)
        tic = time.perf_counter()
        for _ in range(steps):
            step(net, balance, opt, fixed, amp)
        sync(device)
        compute = max(compute, steps * cfg.train.batch_size / (time.perf_counter() - tic))
        tic = time.perf_counter()
        for _ in range(steps):
            step(net, balance, opt, batch_to(next(batches), device), amp)
        sync(device)
        end_to_end = max(end_to_end, steps * cfg.train.batch_size / (time.perf_counter() - tic))
    return end_to_end, compute


# (label, config, overrides, device, bf16, channels_last, compile)
Variant = tuple[str, str, tuple[str, ...], str, bool, bool, bool]
VIDEO_ONLY = ("model.modalities=[video]",)


def cuda_variants() -> list[Variant]:
    default = [("default", "default", (), "cuda", amp, cl, comp) for amp, cl, comp in
               [(True, True, False), (True, False, False), (False, True, False), (False, False, False),
                (True, True, True)]]
    video = [("video", "default", VIDEO_ONLY + batch, "cuda", True, True, comp)
             for batch, comp in [((), False), ((), True), (("train.batch_size=128",), True)]]
    strong = [("strong", "strong", (), "cuda", True, False, comp) for comp in (False, True)]
    return default + video + strong


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny", help="comma-separated configs timed on the CPU (default tiny)")
    p.add_argument("--cuda", action="store_true", help="also time default.yaml and strong.yaml variants on the GPU")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds, best of each")
    p.add_argument("--clips", type=int, default=96, help="clips in the random store")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for every variant, e.g. model.fusion.mode=transformer train.aux_weight=0")
    args = p.parse_args()

    variants: list[Variant] = [(name, name, (), "cpu", False, False, False) for name in args.configs.split(",")]
    if args.cuda:
        if not torch.cuda.is_available():
            sys.exit("--cuda given but no CUDA device is visible")
        variants += cuda_variants()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stores: dict[tuple[str, int], tuple[FeatureStore, list[str]]] = {}
        for label, name, extra, device, amp, cl, comp in variants:
            cfg = load_config(name, ["model.video.pretrained=false", "model.audio.pretrained=false", *extra,
                                     *args.overrides])
            clips = max(args.clips, 2 * cfg.train.batch_size)  # whole batches only (drop_last)
            key = (name, cfg.data.face_size, clips)
            if key not in stores:  # one store per config, face size and length
                path = Path(tmp) / "_".join(map(str, key))
                ids = write_random_store(path, clips, 16, cfg.data.face_size, cfg.data.audio_frames)
                stores[key] = (FeatureStore(path), ids)
            e2e, compute = measure(cfg, *stores[key], torch.device(device), amp, cl, comp, args.steps, args.workers,
                                   args.rounds)
            text = f"{label:8s} {device:4s} {'bf16' if amp else 'fp32'} {'channels_last' if cl else 'contiguous':13s} " \
                   f"{'compile' if comp else 'eager':7s} batch {cfg.train.batch_size:3d}"
            rows.append((text, e2e, compute))
            print(f"{text}  end-to-end {e2e:8.1f} clips/s   compute-only {compute:8.1f} clips/s", flush=True)
    text, e2e, compute = rows[0]
    print(f"ratio end-to-end/compute-only ({' '.join(text.split()[:2])}): {e2e / compute:.2f}")


if __name__ == "__main__":
    main()
