"""CPU inference backends for the CNN front-ends: the same network, with the same weights, run
by eager PyTorch (the reference), `torch.compile` (inductor), ONNX Runtime or OpenVINO.

A front-end hands `accelerate` its pure-tensor core (``[N, ...]`` float in, a tensor or a dict
of tensors out) and an example input; it gets back a `_Runner`, a module with the same call
signature. ONNX and OpenVINO models are exported from the module's own weights on first use
and cached under the weights cache (``backends/<key>/``), the key being a sha256 of the
weights' bytes, the input's non-dynamic shape and the backend's version; each exported file
is stored beside its own sha256 and re-exported when it does not match (like converted weights
in `emotiw.io.weights`). A backend that is not installed, not usable on this device or fails to
export falls back to eager, and `_Runner.describe` says so: it goes into the provenance of every
output row, so figures are never attributed to a backend that did not run.

Accuracy: every backend runs in float32 (OpenVINO's CPU plugin would otherwise choose bf16 on
CPUs that have it, and its model files fp16); the parity tests bound the differences.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emotiw.io.weights import Provenance, WeightsConfig

EAGER = "eager"
AUTO = "auto"
_BACKENDS = (AUTO, EAGER, "compile", "onnxruntime", "openvino")
# What `auto` runs on a CPU. ONNX Runtime and OpenVINO were the fastest backends per clip of
# the paper configuration in `jobs/benchmark.py backends`, each leading some runs
# (docs/benchmarks.md: why ONNX Runtime for now; OpenVINO is a one-line change here).
_CPU_DEFAULT = "onnxruntime"
_DISTRIBUTION = {"onnxruntime": "onnxruntime", "openvino": "openvino", "compile": "torch"}
_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino", "compile": "torch._inductor"}


class _Runner(nn.Module):
    """A front-end core run by one backend; `backend` is what actually runs, `note` why it
    is not the one asked for (empty when it is)."""

    def __init__(self, backend: str, note: str = "") -> None:
        super().__init__()
        self.backend, self.note = backend, note

    @property
    def describe(self) -> str:
        """``openvino 2026.4.1``, or ``eager (openvino: not installed)``."""
        if self.backend == EAGER:
            return f"{EAGER} ({self.note})" if self.note else EAGER
        return f"{self.backend} {_version(self.backend)}"


class _Eager(_Runner):
    def __init__(self, module: nn.Module, note: str = "", backend: str = EAGER) -> None:
        super().__init__(backend, note)
        self.module = module

    def forward(self, x: torch.Tensor) -> Any:
        return self.module(x)


class _Session(_Runner):
    """ONNX Runtime or OpenVINO: numpy in, numpy out, outputs named like the eager ones."""

    def __init__(self, backend: str, run: Any, names: list[str], as_dict: bool) -> None:
        super().__init__(backend)
        self._run, self.names, self.as_dict = run, names, as_dict

    def forward(self, x: torch.Tensor) -> Any:
        outputs = [torch.from_numpy(np.asarray(o)) for o in self._run(x.detach().contiguous())]
        return dict(zip(self.names, outputs, strict=True)) if self.as_dict else outputs[0]


def accelerate(
    module: nn.Module,
    example: torch.Tensor,
    backend: str,
    *,
    cache_dir: Path,
    dynamic: Sequence[int] = (0,),
    threads: int | None = None,
) -> _Runner:
    """`module` (eval mode, CPU) run by `backend`, exported on first use into `cache_dir`.

    `dynamic`: the input dimensions that vary between calls (the batch; pose's image height
    and width); the others are fixed to `example`'s. Falls back to eager (with a note) when
    the backend is missing, the module is not on the CPU, or the export fails."""
    check(backend)
    device = next(module.parameters()).device
    backend = choose(backend, device)
    if backend == EAGER:
        return _Eager(module)
    if device.type != "cpu":
        return _Eager(module, f"{backend}: CPU only")
    try:
        importlib.import_module(_MODULE.get(backend, "torch"))
    except ImportError:
        return _Eager(module, f"{backend}: not installed")
    threads = threads or torch.get_num_threads()
    with torch.inference_mode():
        reference = module(example)
    as_dict = isinstance(reference, dict)
    names = list(reference) if as_dict else ["output"]
    try:
        if backend == "compile":
            return _Eager(torch.compile(module, dynamic=len(dynamic) > 1), backend="compile")
        folder = Path(cache_dir) / "backends" / _key(module, example, dynamic, backend)
        if backend == "onnxruntime":
            path = _cached(folder / "model.onnx", lambda tmp: export_onnx(
                module, example, dynamic, tmp / "model.onnx", names))  # fmt: skip
            return onnxruntime_runner(path, names, as_dict, threads)
        return _Session(backend, _openvino(module, example, dynamic, folder, threads), names,
                        as_dict)  # fmt: skip
    except Exception as exc:  # an operator the exporter lacks, a broken install: stay correct
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return _Eager(module, f"{backend} failed: {first}")


def check(backend: str) -> None:
    """For a modality Config's ``backend`` field."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}; got {backend!r}")


def choose(backend: str, device: torch.device | str) -> str:
    """The backend that `backend` means on `device`: ``auto`` is `_CPU_DEFAULT` on a CPU and
    eager elsewhere (the exported runtimes here are CPU builds; on CUDA eager PyTorch is
    the GPU path); any other name is itself."""
    if backend != AUTO:
        return backend
    return _CPU_DEFAULT if torch.device(device).type == "cpu" else EAGER


def run_with(
    module: nn.Module,
    example: torch.Tensor,
    backend: str,
    provenance: Provenance,
    weights: WeightsConfig | None = None,
    dynamic: Sequence[int] = (0,),
) -> tuple[nn.Module, Provenance]:
    """`accelerate` into the weights cache, and `provenance` saying what runs the network
    (eager: `module` itself, untouched)."""
    import dataclasses

    backend = choose(backend, next(module.parameters()).device)
    if backend == EAGER:
        return module, provenance

    cache = (weights or WeightsConfig()).resolved_cache_dir()
    runner = accelerate(module, example, backend, cache_dir=cache, dynamic=dynamic)
    return runner, dataclasses.replace(provenance, backend=runner.describe)


def _version(backend: str) -> str:
    return importlib.metadata.version(_DISTRIBUTION.get(backend, "torch"))


def _key(module: nn.Module, example: torch.Tensor, dynamic: Sequence[int], backend: str) -> str:
    """sha256 of what the exported file depends on: the weights, the fixed input dimensions,
    the module's class and the backend's version."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    shape = [-1 if i in dynamic else n for i, n in enumerate(example.shape)]
    digest.update(f"{type(module).__qualname__}{shape}{backend}{_version(backend)}".encode())
    return digest.hexdigest()[:24]


def _cached(path: Path, export: Any) -> Path:
    """`path` as exported before if its sha256 file matches, else exported (atomically) now."""
    digest_file = path.with_name(path.name + ".sha256")
    if path.exists() and digest_file.exists() and _sha256(path) == digest_file.read_text():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        written = export(Path(tmp))  # the main file; side files (weights) are moved with it
        for side in sorted(Path(tmp).iterdir()):
            if side != written:
                os.replace(side, path.with_name(path.stem + side.suffix))
        os.replace(written, path)
    digest_file.write_text(_sha256(path))
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for candidate in sorted(path.parent.glob(path.stem + ".*")):  # .onnx / .xml with its .bin
        if not candidate.name.endswith(".sha256"):
            digest.update(candidate.read_bytes())
    return digest.hexdigest()


def export_onnx(module: nn.Module, example: torch.Tensor, dynamic: Sequence[int],
                 target: Path, names: list[str]) -> Path:  # fmt: skip
    """TorchScript-based exporter: it needs no extra package and handles torchvision's
    detection backbone with dynamic height and width."""
    import warnings

    outputs = [f"output{i}" for i in range(len(names))]  # ONNX wants identifiers, not "0"
    axes = {"input": {i: f"d{i}" for i in dynamic}}
    axes |= {name: {0: "d0"} for name in outputs} if 0 in dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
        torch.onnx.export(
            module, (example,), str(target), input_names=["input"], output_names=outputs,
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip
    return target


def onnxruntime_runner(path: Path, names: list[str], as_dict: bool, threads: int) -> _Runner:
    """The ONNX model at `path` run by ONNX Runtime on the CPU with `threads` intra-op threads,
    outputs named `names` (a dict when `as_dict`, else the first). Also runs the int8 models of
    ``jobs/benchmark.py int8``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> list[np.ndarray]:
        return session.run(None, {"input": x.numpy()})

    return _Session("onnxruntime", run, names, as_dict)


def _openvino(module: nn.Module, example: torch.Tensor, dynamic: Sequence[int],
              folder: Path, threads: int) -> Any:  # fmt: skip
    import openvino as ov

    def export(tmp: Path) -> Path:
        import warnings

        shape = ov.PartialShape([-1 if i in dynamic else n for i, n in enumerate(example.shape)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
            model = ov.convert_model(module, example_input=example, input=[shape])
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        return tmp / "model.xml"

    path = _cached(folder / "model.xml", export)
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
              "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    outputs = compiled.outputs

    def run(x: torch.Tensor) -> list[np.ndarray]:
        result = request.infer({0: x.numpy()}, share_inputs=True)
        return [np.copy(result[o]) for o in outputs]

    return run
