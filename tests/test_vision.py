"""torchvision on this torch build: the NMS and RoIAlign kernels used when torchvision's compiled
ops cannot load (CPU-only torch), checked against independent references."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from emotiw.modalities.nets.torchvision_ops import (
    _nms_reference,
    _roi_align_grid_sample,
    _roi_align_onnxruntime,
    _state,
    import_torchvision,
    native_ops,
    set_roi_align_kernel,
)


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Brute-force reference: the full IoU matrix, then the greedy sweep."""
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1) * (y2 - y1)
    iw = np.clip(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0, None)
    ih = np.clip(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0, None)
    iou = iw * ih / (area[:, None] + area - iw * ih)
    removed, keep = np.zeros(len(boxes), bool), []
    for i in np.argsort(-scores, kind="stable"):
        if not removed[i]:
            keep.append(int(i))
            removed |= iou[i] > thr
    return keep


def test_nms_matches_reference_and_torchvision_runs() -> None:
    torchvision = import_torchvision()
    assert isinstance(native_ops(), bool)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (400, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(size=400).astype(np.float32)
    expected = _greedy_nms(boxes, scores, 0.5)
    tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
    assert _nms_reference(tb, ts, 0.5).tolist() == expected
    assert torchvision.ops.nms(tb, ts, 0.5).tolist() == expected
    idx = torch.from_numpy(rng.integers(0, 3, 400))
    kept = torchvision.ops.batched_nms(tb, ts, idx, 0.5)
    for cls in range(3):  # per class, batched NMS is plain NMS
        members = torch.nonzero(idx == cls).squeeze(1)
        want = members[_greedy_nms(boxes[members.numpy()], scores[members.numpy()], 0.5)]
        assert sorted(kept[idx[kept] == cls].tolist()) == sorted(want.tolist())


def _kernel_roi_align(x, rois, scale, ph, pw, sr, aligned):
    """Per-sample transcription of torchvision's native RoIAlign kernel (CPU)."""

    def bilinear(f, y, xx):
        height, width = f.shape[-2:]
        if y < -1.0 or y > height or xx < -1.0 or xx > width:
            return torch.zeros(f.shape[0], dtype=f.dtype)
        y, xx = max(y, 0.0), max(xx, 0.0)
        yl, xl = int(y), int(xx)
        if yl >= height - 1:
            yh = yl = height - 1
            y = float(yl)
        else:
            yh = yl + 1
        if xl >= width - 1:
            xh = xl = width - 1
            xx = float(xl)
        else:
            xh = xl + 1
        ly, lx = y - yl, xx - xl
        hy, hx = 1 - ly, 1 - lx
        return (
            hy * hx * f[:, yl, xl]
            + hy * lx * f[:, yl, xh]
            + ly * hx * f[:, yh, xl]
            + ly * lx * f[:, yh, xh]
        )

    out = torch.zeros(len(rois), x.shape[1], ph, pw, dtype=x.dtype)
    off = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sw, sh = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sw, y2 * scale - off - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        for i in range(ph):
            for j in range(pw):
                acc = 0
                for iy in range(sr):
                    for ix in range(sr):
                        yy = sh + i * bh + (iy + 0.5) * bh / sr
                        xx = sw + j * bw + (ix + 0.5) * bw / sr
                        acc = acc + bilinear(x[int(b)], yy, xx)
                out[k, :, i, j] = acc / (sr * sr)
    return out


def _random_rois(n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    torch.manual_seed(seed)
    xy = torch.rand(n, 2, dtype=dtype) * torch.tensor([160.0, 110.0], dtype=dtype) - 20
    wh = torch.rand(n, 2, dtype=dtype) * 50 + 1  # some partly off the map
    return torch.cat([torch.randint(0, 2, (n, 1)).to(dtype), xy, xy + wh], 1)


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_the_native_kernel(aligned: bool) -> None:
    rois = _random_rois(12, 0, torch.float64)
    x = torch.randn(2, 4, 12, 16, dtype=torch.float64)
    want = _kernel_roi_align(x, rois, 0.125, 5, 4, 2, aligned)
    got = _roi_align_grid_sample(x, rois, 0.125, 5, 4, 2, aligned)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # ONNX Runtime's kernel (float32 only): the same rules, to float32 rounding
    fast = _roi_align_onnxruntime(x.float(), rois.float(), 0.125, 5, 4, 2, aligned)
    torch.testing.assert_close(fast.double(), want, rtol=1e-5, atol=1e-5)


def test_roi_align_matches_torchvision_python_fallback_in_range() -> None:
    import_torchvision()
    if native_ops():
        pytest.skip("native torchvision ops loaded: the fallback is not in use")
    python_roi_align = inspect.unwrap(_state["python_roi_align"])
    torch.manual_seed(1)
    x = torch.randn(2, 8, 20, 30, dtype=torch.float64)
    xy = torch.rand(40, 2, dtype=torch.float64) * torch.tensor([150.0, 90.0])
    rois = torch.cat(
        [torch.randint(0, 2, (40, 1)).double(), xy, xy + 2 + 60 * torch.rand(40, 2)], 1
    )
    torch.testing.assert_close(
        _roi_align_grid_sample(x, rois, 0.125, 7, 7, 2, False),
        python_roi_align(x, rois, 0.125, 7, 7, 2, False),
    )
    # torchvision's public op is routed to ONNX Runtime's kernel (grid_sample on request)
    x32, rois32 = x.float(), rois.float()
    want = python_roi_align(x32, rois32, 0.125, 7, 7, 2, False)
    out = import_torchvision().ops.roi_align(x32, rois32, (7, 7), 0.125, 2)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(out, _roi_align_onnxruntime(x32, rois32, 0.125, 7, 7, 2, False))
    set_roi_align_kernel("grid_sample")
    try:
        out = import_torchvision().ops.roi_align(x32, rois32, (7, 7), 0.125, 2)
        assert torch.equal(out, _roi_align_grid_sample(x32, rois32, 0.125, 7, 7, 2, False))
    finally:
        set_roi_align_kernel("onnxruntime")
    # adaptive sampling (sampling_ratio 0) follows torchvision's rule in both
    adaptive = python_roi_align(x32, rois32, 0.125, 7, 7, 0, False)
    fast = _roi_align_onnxruntime(x32, rois32, 0.125, 7, 7, 0, False)
    torch.testing.assert_close(fast, adaptive, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [_roi_align_grid_sample, _roi_align_onnxruntime])
def test_roi_align_edge_cases(kernel) -> None:
    x = torch.randn(1, 3, 6, 6)
    assert kernel(x, torch.zeros(0, 5), 1.0, 2, 2, 2, False).shape == (0, 3, 2, 2)
    far = torch.tensor([[0.0, 100.0, 100.0, 120.0, 120.0]])  # entirely off the map: zeros
    assert not kernel(x, far, 1.0, 2, 2, 2, False).any()
    # gradients (training through a detector) take the differentiable grid_sample path
    leaf = x.clone().requires_grad_()
    kernel(leaf, torch.tensor([[0.0, 1.0, 1.0, 4.0, 4.0]]), 1.0, 2, 2, 2, False).sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
