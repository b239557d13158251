"""torchvision on any torch build, with one code path.

torchvision 0.28.0 is the only release matching torch 2.13.0 and every wheel of it is a CUDA
build: on the CPU-only torch its compiled ops library cannot load (it needs libc10_cuda.so)
and ``import torchvision`` then fails with "operator torchvision::nms does not exist".
`import_torchvision()` first tries to load the native library; only when that fails does it
define ``torchvision::nms`` and ``qnms`` with a NumPy kernel and let `torchvision.ops.nms`
through its "compiled ops loaded" assertion (in `torchvision.ops.boxes` that assertion guards
only `nms` and rotated-box IoU; the latter still fails clearly, its op being absent).
torchvision's own Python `roi_align` fallback is correct but slow on CPU (it compiles to a
gather kernel taking ~1.4 s per image for the box head), so with the fallback active it is
replaced by `roi_align`: ONNX Runtime's compiled RoiAlign kernel (the same Detectron rules as
torchvision's; a one-node graph per pooling shape, cached), or where ONNX Runtime is missing,
gradients are needed or the maps are not float32, `_roi_align_grid_sample` (one bilinear
`grid_sample` per image, then average pooling, with the native kernel's rules). Keypoint R-CNN
pools 1,000 proposals per frame: with ONNX Runtime's kernel a clip's detector took 28.3 s
against 39.0 s with grid_sample in one run of `python jobs/benchmark.py backends` (the box
pooling itself ~3.3 s). Detection models then run unchanged. On CUDA builds the native
library loads and nothing is replaced.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

_state: dict[str, Any] = {"native": None, "library": None, "roi_kernel": "onnxruntime"}
_ROI_ALIGN_KERNELS = ("onnxruntime", "grid_sample")


def import_torchvision() -> ModuleType:
    """``torchvision``, importable and with working NMS on this torch build."""
    if "torchvision" not in sys.modules and _state["native"] is None:
        _state["native"] = _load_native_ops()
        if not _state["native"]:
            _register_fallback_ops()
    import torchvision

    if _state["native"] is False:
        boxes = sys.modules["torchvision.ops.boxes"]
        roi_align = sys.modules["torchvision.ops.roi_align"]  # the name is also a function

        boxes._assert_has_ops = _nms_registered
        if roi_align._roi_align is not _roi_align_fallback:
            _state["python_roi_align"] = roi_align._roi_align
            roi_align._roi_align = _roi_align_fallback
    return torchvision


def _nms_registered() -> None:
    import torch

    if not hasattr(torch.ops.torchvision, "nms"):
        raise RuntimeError("torchvision::nms is not registered")


def native_ops() -> bool | None:
    """True if torchvision's compiled ops loaded, False if the fallback is in use."""
    return _state["native"]


def _load_native_ops() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("torchvision is not installed")
    for library in sorted(Path(spec.origin).parent.glob("_C*")):
        try:
            torch.ops.load_library(str(library))
            return True
        except (OSError, RuntimeError):
            continue
    return False


def _nms_reference(boxes: Any, scores: Any, iou_threshold: float) -> Any:
    """Greedy NMS with torchvision's semantics: indices of kept boxes (x1, y1, x2, y2),
    by decreasing score; a box is dropped when its IoU with a kept one exceeds the threshold."""
    import torch

    b = boxes.detach().to("cpu", torch.float64).numpy()
    order = np.argsort(-scores.detach().to("cpu", torch.float64).numpy(), kind="stable")
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, np.finfo(np.float64).tiny)
        order = rest[iou <= iou_threshold]
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def set_roi_align_kernel(kernel: str) -> None:
    """Which kernel the fallback RoIAlign uses in this process (`_ROI_ALIGN_KERNELS`): the
    benchmark compares them; everything else keeps the default, ``onnxruntime``."""
    if kernel not in _ROI_ALIGN_KERNELS:
        raise ValueError(f"RoIAlign kernel must be one of {_ROI_ALIGN_KERNELS}, got {kernel!r}")
    _state["roi_kernel"] = kernel


def _roi_align_fallback(input: Any, rois: Any, *args: Any) -> Any:
    """torchvision's ``_roi_align`` slot when its compiled ops are absent."""
    if _state["roi_kernel"] == "onnxruntime":
        return _roi_align_onnxruntime(input, rois, *args)
    return _roi_align_grid_sample(input, rois, *args)


def _roi_align_onnxruntime(
    input: Any,
    rois: Any,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Any:
    """RoIAlign (average) by ONNX Runtime's CPU kernel; arguments and result as
    `_roi_align_grid_sample`, to which it defers where that kernel does not apply."""
    import torch

    usable = (
        input.dtype == torch.float32
        and input.device.type == "cpu"
        and not (torch.is_grad_enabled() and (input.requires_grad or rois.requires_grad))
    )
    session = usable and _roi_align_session(
        pooled_height, pooled_width, sampling_ratio, float(spatial_scale), bool(aligned),
        torch.get_num_threads(),
    )  # fmt: skip
    if not session:
        return _roi_align_grid_sample(
            input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
        )
    if len(rois) == 0:
        return input.new_zeros((0, input.shape[1], pooled_height, pooled_width))
    rois = rois.detach().to(torch.float32)
    feeds = {
        "X": input.detach().contiguous().numpy(),
        "rois": rois[:, 1:].contiguous().numpy(),
        "batch_indices": rois[:, 0].to(torch.int64).numpy(),
    }
    return torch.from_numpy(session.run(None, feeds)[0])


@functools.cache
def _roi_align_session(
    height: int, width: int, sampling_ratio: int, scale: float, aligned: bool, threads: int
) -> Any:
    """A cached one-node ONNX Runtime session for one pooling shape; None if not installed.
    ``output_half_pixel`` is torchvision's ``aligned=False`` (no half-pixel shift, RoIs at
    least one cell), ``half_pixel`` its ``aligned=True``."""
    try:
        import onnxruntime
        from onnx import TensorProto, helper
    except ImportError:
        return None
    node = helper.make_node(
        "RoiAlign", ["X", "rois", "batch_indices"], ["Y"], mode="avg",
        output_height=height, output_width=width, sampling_ratio=max(sampling_ratio, 0),
        spatial_scale=scale,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
    )  # fmt: skip
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "roi_align",
        [tensor("X", TensorProto.FLOAT, None), tensor("rois", TensorProto.FLOAT, None),
         tensor("batch_indices", TensorProto.INT64, None)],
        [tensor("Y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    # opset 16 has `coordinate_transformation_mode`; IR 8 is what this ONNX Runtime reads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)], ir_version=8)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _roi_align_grid_sample(
    input: Any,
    rois: Any,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Any:
    """RoIAlign (average) with the semantics of torchvision's native kernel.

    Args:
        input: feature maps ``[N, C, H, W]``.
        rois: ``[K, 5]`` rows of (batch index, x1, y1, x2, y2) in input-image pixels.

    Returns:
        ``[K, C, pooled_height, pooled_width]``. Each bin averages `sampling_ratio`^2
        bilinear samples; samples outside [-1, H] x [-1, W] count as zero, others are clamped
        to the map, as in the native kernel.
    """
    import torch
    from torch.nn import functional as F

    if sampling_ratio <= 0:  # adaptive sampling: rare (detection poolers use 2); keep exact
        return _state["python_roi_align"](
            input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
        )
    _, channels, height, width = input.shape
    sr = sampling_ratio
    out = input.new_zeros((len(rois), channels, pooled_height, pooled_width))
    if len(rois) == 0:
        return out
    rois = rois.to(input.dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    steps_y = torch.arange(pooled_height * sr, device=input.device, dtype=input.dtype) + 0.5
    steps_x = torch.arange(pooled_width * sr, device=input.device, dtype=input.dtype) + 0.5
    ys = y1[:, None] + steps_y[None] * (roi_h / (pooled_height * sr))[:, None]  # [K, PH*sr]
    xs = x1[:, None] + steps_x[None] * (roi_w / (pooled_width * sr))[:, None]  # [K, PW*sr]
    valid = ((ys >= -1) & (ys <= height))[:, :, None] & ((xs >= -1) & (xs <= width))[:, None]

    def normalised(v: Any, size: int) -> Any:  # align_corners=True: pixel i -> 2i/(size-1)-1
        v = v.clamp(0, size - 1)
        return v * (2.0 / (size - 1)) - 1.0 if size > 1 else torch.zeros_like(v)

    gy, gx = normalised(ys, height), normalised(xs, width)
    batch = rois[:, 0].long()
    for b in batch.unique().tolist():
        k = torch.nonzero(batch == b).squeeze(1)
        grid = torch.stack(
            [
                gx[k][:, None, :].expand(-1, ys.shape[1], -1),
                gy[k][:, :, None].expand(-1, -1, xs.shape[1]),
            ],
            dim=-1,
        )  # [Kb, PH*sr, PW*sr, 2]
        samples = F.grid_sample(
            input[b : b + 1],
            grid.reshape(1, -1, xs.shape[1], 2),
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )  # [1, C, Kb*PH*sr, PW*sr]
        samples = samples.reshape(channels, len(k), ys.shape[1], xs.shape[1]).transpose(0, 1)
        samples = samples * valid[k][:, None]
        out[k] = F.avg_pool2d(samples, kernel_size=sr, stride=sr)
    return out


def _register_fallback_ops() -> None:
    import torch

    library = torch.library.Library("torchvision", "FRAGMENT")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")

    def qnms(qdets: Any, qscores: Any, iou_threshold: float) -> Any:
        return _nms_reference(qdets.dequantize(), qscores.dequantize(), iou_threshold)

    library.impl("nms", _nms_reference, "CompositeExplicitAutograd")
    library.impl("qnms", qnms, "CompositeExplicitAutograd")
    _state["library"] = library  # the registration lives as long as this object
