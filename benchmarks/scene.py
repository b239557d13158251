"""scene: sizes first (what the feature table would store per clip: the 12 frames as JPEG, on
real photos and on the sample corpus, against the backbone's feature maps in float16 and
float32), then frames/s of the time-distributed backbone at 480x320 (random-init weights:
the cost does not depend on their values) for memory format x autograd mode x frames per
forward, each against the plain NCHW / no_grad / one-clip configuration measured in the
same run; then clips/s of the three ConvLSTM heads + FC on precomputed maps. On CUDA
(when available) the same with bfloat16 autocast.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.harness import load_corpus, per_clip_seconds, synced


def _photo_frames(n: int) -> np.ndarray:
    """``n`` real photographs (scikit-image's bundled ones) resized to 480x320."""
    from PIL import Image
    from skimage import data

    photos = [
        data.astronaut(),
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        data.immunohistochemistry(),
    ]
    return np.stack([
        np.asarray(Image.fromarray(photos[i % len(photos)]).convert("RGB").resize((480, 320)))
        for i in range(n)
    ])  # fmt: skip


def bench_scene(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from emotiw.io.frames import decode_frames, encode_frames
    from emotiw.io.media import decode
    from emotiw.modalities import scene

    data = load_corpus(args.corpus, 2, args.seed)[0]
    clip = decode(data)
    t_decode = per_clip_seconds(lambda: decode(data), 5)
    photos = _photo_frames(12)
    mask = np.ones(12, dtype=bool)
    t_jpeg = per_clip_seconds(lambda: encode_frames(photos, mask), 3)
    blobs = encode_frames(photos, mask)
    t_unjpeg = per_clip_seconds(lambda: decode_frames(blobs, 320, 480), 3)
    jpeg_photos = sum(map(len, blobs))
    jpeg_corpus = sum(map(len, encode_frames(clip.frames, clip.frame_mask)))
    jpeg_corpus = jpeg_corpus * 12 / max(1, int(clip.frame_mask.sum()))
    print(
        f"scene: 12 frames 480x320 per clip, torch threads {torch.get_num_threads()}\n"
        f"  same-run baseline: decode {1000 * t_decode:.0f} ms per clip\n"
        f"  JPEG q90 per clip: {jpeg_photos / 1e6:.2f} MB (real photos), "
        f"{jpeg_corpus / 1e6:.2f} MB (sample corpus); encode {1000 * t_jpeg:.0f} ms, "
        f"decode {1000 * t_unjpeg:.0f} ms per clip"
    )
    results: dict[str, float] = {"jpeg_mb": jpeg_photos / 1e6}
    h, w = scene.Config().map_size()
    for name in args.backbones:
        channels = scene.BACKBONE_CHANNELS[name]
        maps_mb = 12 * channels * h * w * 2 / 1e6
        results[f"{name}:maps_fp16_mb"] = maps_mb
        print(
            f"  {name} maps per clip [12, {channels}, {h}, {w}]: {maps_mb:.1f} MB float16, "
            f"{2 * maps_mb:.1f} MB float32 = {maps_mb / (jpeg_photos / 1e6):.0f}x / "
            f"{2 * maps_mb / (jpeg_photos / 1e6):.0f}x the JPEG frames"
        )
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    frames = torch.from_numpy(np.concatenate([photos] * max(1, max(args.batch) // 12 + 1)))
    for device in devices:
        for name in args.backbones:
            print(f"  backbone {name} on {device}")
            print("    layout          mode       frames/fwd  frames/s  ms/clip  vs base  x decode")
            runs = [("nchw", "no_grad", 12), ("channels_last", "no_grad", 12),
                    ("nchw", "inference", 12), ("channels_last", "inference", 12)]  # fmt: skip
            runs += [("channels_last", "inference", b) for b in args.batch if b != 12]
            base = None
            for layout, mode, batch in runs:
                cfg = scene.Config(
                    backbone=name, weights="random-init", channels_last=layout != "nchw"
                )
                backbone = scene.Backbone(cfg).eval().to(device)
                x = frames[:batch].to(device)
                context = torch.inference_mode if mode == "inference" else torch.no_grad

                def step(backbone=backbone, x=x, context=context) -> None:
                    with context():
                        backbone(x)

                per_frame = per_clip_seconds(synced(step, device), args.repeat) / batch
                base = base or per_frame
                results[f"{device}:{name}:{layout}:{mode}:{batch}"] = per_frame
                print(
                    f"    {layout:14s}  {mode:9s}  {batch:10d}  {1 / per_frame:8.1f}"
                    f"  {12000 * per_frame:7.0f}  {base / per_frame:6.2f}x"
                    f"  {12 * per_frame / t_decode:8.0f}"
                )
        head = scene.Head(scene.Config(backbone=args.backbones[0], weights="random-init"))
        head = head.eval().to(device)
        maps = torch.randn(args.head_batch, 12, head.backbone.out_channels, h, w, device=device)

        def heads_step(head=head, maps=maps) -> None:
            with torch.inference_mode():
                head.forward_head(head.forward_maps(maps))

        per_clip = per_clip_seconds(synced(heads_step, device), args.repeat) / args.head_batch
        results[f"{device}:heads"] = per_clip
        print(
            f"  ConvLSTM heads + FC ({args.backbones[0]} maps, {args.head_batch} clips/forward)"
            f" on {device}: {1 / per_clip:.1f} clips/s, {1000 * per_clip:.0f} ms/clip"
            f" = {per_clip / t_decode:.1f}x decode"
        )
    return results
