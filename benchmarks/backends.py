"""backends: the paper configuration's CNN front-ends on CPU, run by each inference backend
(eager PyTorch, `torch.compile`, ONNX Runtime, OpenVINO; `emotiw.modalities.nets.backends`)
in one run: ms per clip of each front-end, its speed-up over eager and its parity (largest
difference relative to the eager output's range), then the whole clip: decode + dlib face
detection (no backend: unchanged) + the four networks, as clips/s and as a ratio to eager.

One clip as the paper configuration runs it: scene ResNet-50 on 12 frames 480x320 (in the
model stage's CPU chunks of 4), pose Keypoint R-CNN at 320 px on the 12 frames with --people
per frame (score threshold 0, as the pose benchmark), OpenL3 on 11 windows (2 per forward, the
CPU default), FER on --faces crops. Random-init weights where the pretrained ones are not
offline (ResNet-50, Keypoint R-CNN, OpenL3): the cost does not depend on the weight values.
The first call of a backend exports (or compiles) and caches: that one-off time is printed
apart and not in the per-clip figures.

On a CPU-only torch build torchvision's compiled RoIAlign is missing and emotiw supplies one
(`emotiw.modalities.nets.torchvision_ops`): ONNX Runtime's kernel, before that a grid_sample
one. The pose row ``eager/grid_sample`` and the per-clip row ``eager (grid_sample RoIAlign)``
measure that earlier baseline in the same run; the other pose rows use the current kernel.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.harness import load_corpus, per_clip_seconds

FRONT_ENDS = ("scene", "pose", "audio", "fer")


GRID = "eager/grid_sample"  # eager pose with the earlier grid_sample RoIAlign kernel


def _front_end(name: str, backend: str, clip: Any, args: argparse.Namespace,
               weights: Any) -> tuple[Callable[[], Any], str]:  # fmt: skip
    """A callable doing one clip's work of front-end `name` with `backend`, and what ran."""
    import numpy as np
    import torch

    from emotiw.io.frames import fit
    from emotiw.modalities import audio, face, pose, scene
    from emotiw.modalities.nets import backends, openl3
    from emotiw.modalities.nets.backbones import Backbone

    if name == "scene":
        net = Backbone(scene.Config(weights="random-init"), weights).eval()
        frames = torch.from_numpy(fit(clip.frames, 320, 480))
        x = frames.permute(0, 3, 1, 2).float().sub(net.mean).div(net.std)
        run, prov = backends.run_with(net.trunk, x[:1], backend, net.provenance, weights)
        return lambda: [run(x[i : i + scene.CPU_FRAME_BATCH]) for i in range(0, 12, 4)], prov
    if name == "pose":
        cfg = pose.Config(weights="random-init", score_threshold=0.0, keypoint_threshold=-1e9,
                          max_people=args.people, device="cpu", backend=backend)  # fmt: skip
        extractor = pose.Extractor(cfg, weights)
        return lambda: extractor.detect(clip.frames), extractor.provenance["pose"]
    if name == "audio":
        cfg = audio.Config(weights="random-init", device="cpu", backend=backend)
        extractor = audio.Extractor(cfg, weights)
        sound = np.random.default_rng(0).normal(0, 0.1, 48_000 * 6).astype(np.float32)
        wins, _ = openl3.windows(sound, n_steps=11, hop_s=0.5)  # 11 windows of 1 s at 48 kHz
        return lambda: extractor._embed(wins), extractor.provenance["audio"]
    extractor = face.Extractor(face.Config(backend=backend), weights)
    crops = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (args.faces, 1, 64, 64))
                             .astype(np.float32))  # fmt: skip
    return lambda: extractor.fer(crops).softmax(-1), extractor.provenance["fer"]


def _flat(out: Any) -> Any:
    import torch

    if isinstance(out, list):
        if out and isinstance(out[0], dict) and "boxes" in out[0]:  # detections
            return torch.cat([torch.as_tensor(o["keypoints_scores"]).flatten() for o in out])
        return torch.cat([_flat(o) for o in out])
    if isinstance(out, dict):
        return torch.cat([v.flatten() for v in out.values()])
    return torch.as_tensor(out).flatten().float()


def one_clip(args: argparse.Namespace, weights: Any) -> tuple[Any, float, float]:
    """A decoded sample clip and the per-clip seconds of what no backend changes: decoding
    it, and dlib's face detection on it (shared with ``benchmarks.int8``)."""
    from emotiw.io.media import decode
    from emotiw.modalities import face

    data = load_corpus(args.corpus, 2, args.seed)[0]
    clip = decode(data)
    t_decode = per_clip_seconds(lambda: decode(data), 3)
    detector = face.Extractor(face.Config(), weights)
    return clip, t_decode, per_clip_seconds(lambda: detector.detect(clip), 2)


def bench_backends(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from emotiw.io.weights import WeightsConfig
    from emotiw.modalities.nets import torchvision_ops

    weights = WeightsConfig(cache_dir=args.cache or tempfile.mkdtemp(prefix="emotiw-backends-"))
    clip, t_decode, t_detect = one_clip(args, weights)
    print(
        f"backends: the paper configuration's front-ends on CPU, torch threads "
        f"{torch.get_num_threads()}, cache {weights.resolved_cache_dir()}\n"
        f"  unchanged per clip: decode {1000 * t_decode:.0f} ms, dlib face detection "
        f"{1000 * t_detect:.0f} ms"
    )
    print("    front-end  backend                          prep s  ms/clip  x eager  max rel diff")
    per: dict[tuple[str, str], float] = {}
    for name in args.front_ends:
        reference = None
        runs = list(args.backends)
        if name == "pose" and not torchvision_ops.native_ops() and "eager" in runs:
            runs.insert(runs.index("eager") + 1, GRID)
        for backend in runs:
            kernel = "grid_sample" if backend == GRID else "onnxruntime"
            torchvision_ops.set_roi_align_kernel(kernel)
            start = time.perf_counter()
            fn, prov = _front_end(name, backend.split("/")[0], clip, args, weights)
            with torch.inference_mode():
                out = _flat(fn())  # the export / compile happens in the first call or before
                prep = time.perf_counter() - start
                seconds = per_clip_seconds(fn, args.repeat)
            if reference is None:
                reference = out
            diff = (out - reference).abs().max().item() / max(reference.abs().max().item(), 1e-12)
            per[(name, backend)] = seconds
            base = per[(name, args.backends[0])]
            label = f"{prov.backend} ({backend})" if backend == GRID else prov.backend
            print(f"    {name:9s}  {label[:31]:31s}  {prep:6.1f}  {1000 * seconds:7.0f}"
                  f"  {base / seconds:6.2f}x  {diff:.1e}", flush=True)  # fmt: skip
    torchvision_ops.set_roi_align_kernel("onnxruntime")
    rows = {b: {n: per[(n, b)] for n in args.front_ends} for b in args.backends}
    if ("pose", GRID) in per:  # the earlier baseline: every front-end eager, grid_sample pose
        rows = {"eager (grid_sample RoIAlign)": {**rows["eager"], "pose": per[("pose", GRID)]},
                **rows}  # fmt: skip
    print("    per clip (decode + face detection + the front-ends above)")
    first = next(iter(rows))
    print(f"    backend                       s/clip  clips/s  x {args.backends[0]}  x {first}")
    results: dict[str, float] = {}
    for backend, costs in rows.items():
        results[backend] = total = t_decode + t_detect + sum(costs.values())
        eager = t_decode + t_detect + sum(rows[args.backends[0]].values())
        print(f"    {backend:28s}  {total:6.2f}  {1 / total:7.3f}  {eager / total:7.2f}x"
              f"  {results[first] / total:6.2f}x")  # fmt: skip
    return results
