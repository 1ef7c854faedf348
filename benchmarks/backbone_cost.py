"""Parameters and forward GFLOPs per clip of every documented backbone, at its real size, offline.

Each backbone is built with random weights from its published settings (no download) and run once
under torch.utils.flop_counter on CPU: video backbones on T face crops at their own input size
(one frame counted, times T: frames are independent), speech backbones on one clip window of
`--seconds`. FLOPs count a multiply-add as 2; attention and convolutions are included,
elementwise operations are not.

    OMP_NUM_THREADS=1 python benchmarks/backbone_cost.py --frames 16 --seconds 5.12

Prints a Markdown table (the encoder table of docs/encoders.md takes its numbers from it).
"""

from __future__ import annotations

import argparse
import logging

import torch
from torch.utils.flop_counter import FlopCounterMode

from dfew_mm.models.encoders.audio import AudioEncoder, AudioEncoderConfig
from dfew_mm.models.encoders.video import VideoEncoder, VideoEncoderConfig, face_geometry

VIDEO = [("resnet18", 112), ("resnet18", 224), ("resnet50", 112), ("resnet50", 224),
         ("timm/tf_efficientnet_b0.ns_jft_in1k", 0), ("timm/tf_efficientnet_b2.ns_jft_in1k", 0),
         ("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", 0), ("hf/openai/clip-vit-base-patch16", 0),
         ("hf/openai/clip-vit-base-patch16", 112), ("hf/google/siglip-base-patch16-224", 0),
         ("hf/facebook/dinov2-small", 0), ("hf/facebook/dinov2-base", 0)]
AUDIO = ["ast", "hf/microsoft/wavlm-base-plus", "hf/facebook/hubert-base-ls960", "hf/openai/whisper-base",
         "hf/openai/whisper-small"]


def count(fn) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.12)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"| arch | input | params (M) | GFLOPs per clip ({args.frames} frames / {args.seconds:g} s) |")
    print("|---|---|---|---|")
    for arch, size in VIDEO:
        enc = VideoEncoder(VideoEncoderConfig(arch=arch, pretrained=False, input_size=size)).eval()
        _, crop = face_geometry(enc.spec, enc.cfg, stored=size or None)
        x = torch.randn(1, 3, crop, crop)
        flops = count(lambda: enc.backbone(x)) * args.frames
        params = sum(p.numel() for p in enc.backbone.parameters()) / 1e6
        print(f"| {arch} | {crop} px | {params:.1f} | {flops / 1e9:.1f} |", flush=True)
    for arch in AUDIO:
        frames = round(args.seconds * 100)
        enc = AudioEncoder(AudioEncoderConfig(arch=arch, pretrained=False, max_length=frames)).eval()
        if enc.spec.input == "fbank":
            x, mask, what = torch.randn(1, frames, 128), torch.ones(1, frames, dtype=torch.bool), "filterbank"
        else:
            n = round(args.seconds * enc.spec.sampling_rate)
            x, mask, what = torch.randn(1, n) * 0.1, torch.ones(1, n, dtype=torch.bool), "waveform"
        flops = count(lambda: enc(x, mask))
        params = sum(p.numel() for p in enc.backbone.parameters()) / 1e6
        print(f"| {arch} | {what} | {params:.1f} | {flops / 1e9:.1f} |", flush=True)


if __name__ == "__main__":
    main()
