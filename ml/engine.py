"""CPU inference engines: the same trained classifier, run faster on a CPU.

    from ml.engine import best_fp32_engine, optimise_for_cpu
    clf = Classifier.load("ml/weights/pbc8-mobilenetv2.pt", device="cpu")
    clf.model = optimise_for_cpu(clf.model, input_size=clf.input_size, engine=best_fp32_engine())

Every engine returns an `nn.Module` whose forward takes the normalised N x 3 x S x S float batch
that `Classifier.preprocess` makes and returns N x C float32 logits, so it drops into
`Classifier.model` unchanged (temperature, softmax and labels stay where they are).

The engines, in the order to reach for them. Images/s: one run on a 2-core AVX-512 Xeon, one
thread, batch 32, the PBC MobileNetV2 at 192 px, 1263 held-out images (bench/README.md).

- "ort-fp32" (DEFAULT_ENGINE; 171 images/s, 6.7x eager, every prediction the same): ONNX
  Runtime, fp32. Eager's maths up to float rounding (ORT folds the BatchNorms into the
  convolutions and runs its own kernels), so it is safe for any checkpoint with no per-model
  check. Needs `onnxruntime` and `onnx` (in the dev extra; the exporter writes the graph
  with `onnx`); the session is built in memory in about a second, once per process.
- "fused-channels-last" (92 images/s, 3.6x, every prediction the same): pure PyTorch:
  BatchNorm folded into the convolutions (torch.fx) and NHWC layout, which oneDNN's depthwise
  convolutions need to be fast. No new dependency: the choice where ONNX Runtime is missing
  (`best_fp32_engine` picks between the two).
- "ort-int8" (283 images/s, 11x, but 0.32 accuracy points lower): ONNX Runtime static int8
  (QDQ, per-channel weights; the first convolution and the classifier stay fp32), calibrated
  on real cells. It changes answers, by an amount that moves with the calibration images, and
  it needs those images when it is built: only for a model whose delta on held-out images was
  measured and accepted, and best built once, offline, and kept beside the checkpoint.
- "fx-int8" (194 images/s, 1.11 points lower): PyTorch FX graph-mode static int8 (x86
  backend); torch.ao.quantization is deprecated upstream in favour of torchao.
- "inductor" (83 images/s): torch.compile (inductor, freezing) on NHWC. Needs a C++ compiler
  and compiles on the first call of each process and batch shape (39 s cold on 2 cores): no
  gain over "fused-channels-last".
- "channels-last" (45 images/s): NHWC layout only.
- "eager" (25.5 images/s): the model as trained, NCHW: what `Classifier` runs on a CPU today.

Checked before use: `choose_engine` runs a candidate and eager on a few real cells and keeps
the candidate only if it gives eager's answers; with no cells to compare it keeps eager.
`check_cells` gives the sixteen real cells shipped inside this package (ml/check_cells), so
an installed worker always has some.

Threads: every engine uses `torch.get_num_threads()` unless `threads` is given, so a worker that
sets its intra-op threads before building the engine gets the same count in ONNX Runtime.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from PIL import Image
from torch import nn

FP32_ENGINES: Final = ("eager", "channels-last", "fused-channels-last", "inductor", "ort-fp32")
INT8_ENGINES: Final = ("fx-int8", "ort-int8")
ENGINES: Final = FP32_ENGINES + INT8_ENGINES
DEFAULT_ENGINE: Final = "ort-fp32"
# ONNX opset of the exported graph; 17 is read by every ONNX Runtime release of recent years.
OPSET: Final = 17
# Real cells shipped with the package (package data): what an engine is checked on when the
# caller has none of its own (ml/check_cells/README.md says where they come from).
CHECK_CELLS_DIR: Final = Path(__file__).resolve().parent / "check_cells"


class EngineUnavailable(RuntimeError):
    """The engine needs something this installation lacks (a package, a compiler)."""


def available_engines() -> list[str]:
    """The engines whose packages are installed here (inductor is assumed to have a compiler)."""
    has_ort = _has_module("onnxruntime") and _has_module("onnx")
    return [name for name in ENGINES if has_ort or not name.startswith("ort-")]


def best_fp32_engine() -> str:
    """The fastest engine installed here that gives eager's answers: ort-fp32, else pure PyTorch."""
    return DEFAULT_ENGINE if DEFAULT_ENGINE in available_engines() else "fused-channels-last"


def check_cells(limit: int | None = None) -> list[Image.Image]:
    """The real cells shipped in CHECK_CELLS_DIR (RGB, in name order: two of each class
    first-to-last), at most limit of them."""
    paths = sorted(CHECK_CELLS_DIR.glob("*.jpg"))[:limit]
    cells = []
    for path in paths:
        with Image.open(path) as picture:
            cells.append(picture.convert("RGB"))
    return cells


def needs_calibration(engine: str) -> bool:
    return engine in INT8_ENGINES


def optimise_for_cpu(
    model: nn.Module,
    *,
    input_size: int,
    engine: str = DEFAULT_ENGINE,
    calibration: torch.Tensor | None = None,
    threads: int | None = None,
) -> nn.Module:
    """The model run by `engine`, for CPU inference only (never train the result).

    calibration: for the int8 engines, a few hundred preprocessed real images (N x 3 x S x S)
    that the quantisation ranges are measured on; cells like the ones the worker will see,
    ideally training images. Ignored by the fp32 engines.
    threads: intra-op threads (default: torch.get_num_threads()).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {list(ENGINES)}")
    if needs_calibration(engine) and (calibration is None or len(calibration) == 0):
        raise ValueError(f"{engine} needs calibration images")
    threads = threads or torch.get_num_threads()
    # A copy, so the caller's eager model stays usable as the reference.
    source = copy.deepcopy(model).cpu().eval()
    builders: dict[str, Callable[[], nn.Module]] = {
        "eager": lambda: source,
        "channels-last": lambda: ChannelsLast(source),
        "fused-channels-last": lambda: ChannelsLast(fold_batchnorm(source)),
        "inductor": lambda: _inductor(source),
        "fx-int8": lambda: _fx_int8(source, _required(calibration)),
        "ort-fp32": lambda: OnnxRuntimeModel(export_onnx(source, input_size), threads=threads),
        "ort-int8": lambda: OnnxRuntimeModel(
            quantise_onnx(export_onnx(source, input_size), _required(calibration)),
            threads=threads,
        ),
    }
    return builders[engine]()


@dataclass(frozen=True)
class EngineChoice:
    """What `choose_engine` settled on, and why the faster ones were passed over."""

    name: str
    model: nn.Module
    passed_over: tuple[str, ...] = ()  # "engine: reason", in the order tried
    max_probability_change: float = 0.0  # on the check images, against eager


# An engine is used only if, on the check images, every top class is eager's and no class
# probability moves by more than this (float rounding moves them by about 1e-6).
MAX_PROBABILITY_CHANGE: Final = 1e-3


def choose_engine(
    model: nn.Module,
    *,
    input_size: int,
    check: torch.Tensor,
    wanted: str = "auto",
    threads: int | None = None,
) -> EngineChoice:
    """The fastest prediction-preserving fp32 engine for `model`, checked against eager.

    wanted="auto" tries ort-fp32 (when installed), then fused-channels-last; a named engine is
    tried alone. Each candidate must give eager's top class on every image of `check` (a few
    preprocessed real cells) and move no probability by more than MAX_PROBABILITY_CHANGE;
    otherwise, or if it cannot be built here, the next is tried, and eager is the last resort.
    With no check images every candidate is refused, with that reason: eager (`check_cells`
    gives real cells to check on when the caller has none of its own).
    The int8 engines are never chosen here: they change answers (see the module's docstring).
    """
    if wanted != "auto" and wanted not in FP32_ENGINES:
        raise ValueError(f"engine must be 'auto' or one of {list(FP32_ENGINES)}, not {wanted!r}")
    candidates: list[str]
    if wanted == "auto":
        candidates = [e for e in ("ort-fp32", "fused-channels-last") if e in available_engines()]
    else:
        candidates = [wanted]
    eager = model.cpu().eval()
    x = check.detach().to("cpu", torch.float32).contiguous()
    if len(x) == 0:
        # No cells, no comparison: an engine that was never compared is not used.
        why = "nothing to compare it with eager on (no check images)"
        return EngineChoice(
            "eager", eager, tuple(f"{n}: {why}" for n in candidates if n != "eager")
        )
    with torch.inference_mode():
        reference = torch.softmax(eager(x).float(), dim=1)
    passed_over: list[str] = []
    for name in candidates:
        if name == "eager":
            break
        try:
            candidate = optimise_for_cpu(eager, input_size=input_size, engine=name, threads=threads)
            with torch.inference_mode():
                got = torch.softmax(candidate(x).float(), dim=1)
        except Exception as exc:  # a missing package, a failed export: try the next one
            passed_over.append(f"{name}: could not be built ({type(exc).__name__}: {exc})")
            continue
        change = float((got - reference).abs().max())
        if not torch.equal(got.argmax(1), reference.argmax(1)):
            passed_over.append(f"{name}: changed a top class on the check images")
        elif change > MAX_PROBABILITY_CHANGE:
            passed_over.append(f"{name}: moved a probability by {change:.2g}")
        else:
            return EngineChoice(name, candidate, tuple(passed_over), change)
    return EngineChoice("eager", eager, tuple(passed_over))


# --- pure PyTorch ---------------------------------------------------------------------------


class ChannelsLast(nn.Module):
    """Runs `model` in NHWC layout: oneDNN's fast depthwise kernels want it, NCHW falls back."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x.contiguous(memory_format=torch.channels_last))
        return out


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A traced copy with every Conv+BatchNorm pair folded into one Conv (eval maths only)."""
    from torch.fx.experimental.optimization import fuse

    fused: nn.Module = fuse(model.eval())
    return fused


def _inductor(model: nn.Module) -> nn.Module:
    # freezing turns the weights into constants, which lets inductor fold BatchNorm and
    # pre-pack the convolution weights for oneDNN; without it the compiled model is slower.
    compiled = torch.compile(ChannelsLast(model), options={"freezing": True})
    return _Compiled(compiled)


class _Compiled(nn.Module):
    """Holds a torch.compile'd callable as a module (what torch.compile returns is typed Any)."""

    def __init__(self, compiled: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled(x)


def _fx_int8(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    quantization = importlib.import_module("torch.ao.quantization")
    quantize_fx = importlib.import_module("torch.ao.quantization.quantize_fx")
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it is deprecated (in favour of torchao) on import
        # and on every observer; the API still works on this torch, and the warning is known.
        warnings.simplefilter("ignore")
        prepared = quantize_fx.prepare_fx(
            model, quantization.get_default_qconfig_mapping("x86"), (calibration[:1],)
        )
        with torch.inference_mode():
            for start in range(0, len(calibration), 32):
                prepared(calibration[start : start + 32])
        converted: nn.Module = quantize_fx.convert_fx(prepared)
    return converted


# --- ONNX Runtime ---------------------------------------------------------------------------


def export_onnx(model: nn.Module, input_size: int) -> bytes:
    """The model as an ONNX graph (any batch size), serialised in memory."""
    _require("onnx")
    example = torch.zeros(1, 3, input_size, input_size)
    with tempfile.TemporaryDirectory(prefix="hv-onnx-") as folder, warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the torch.export one, which
        # needs the onnxscript package as well; this one exports MobileNetV2 completely.
        warnings.simplefilter("ignore")
        path = Path(folder) / "model.onnx"
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
        )
        return path.read_bytes()


def quantise_onnx(
    onnx_model: bytes, calibration: torch.Tensor, *, chunk: int = 32, keep_ends_fp32: bool = True
) -> bytes:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations).

    keep_ends_fp32: leave the first convolution (raw pixels in) and the classifier (logits
    out) in fp32. They are the layers most sensitive to rounding and a small share of the work;
    on the PBC model, with one set of 256 calibration images, quantising them too cost 0.24
    accuracy points instead of 0.08 on its 1263 validation images. The delta moves by a few
    tenths of a point with the calibration set (bench/README.md): measure it per model.
    """
    quantization = _require("onnxruntime.quantization")
    shape_inference = _require("onnxruntime.quantization.shape_inference")
    onnx = _require("onnx")
    batches = [calibration[i : i + chunk].numpy() for i in range(0, len(calibration), chunk)]
    base: Any = quantization.CalibrationDataReader

    class Reader(base):  # type: ignore[misc]  # onnxruntime is untyped
        def __init__(self) -> None:
            self.pending = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.pending, None)
            return None if batch is None else {"input": batch}

    # The quantiser works on files only.
    with tempfile.TemporaryDirectory(prefix="hv-onnx-") as folder:
        raw, pre, out = (Path(folder) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        raw.write_bytes(onnx_model)
        # Shape inference and graph clean-up first, as ONNX Runtime's docs ask before quantising.
        shape_inference.quant_pre_process(str(raw), str(pre))
        nodes = [(n.name, n.op_type) for n in onnx.load(str(pre)).graph.node]
        excluded = _end_layers(nodes) if keep_ends_fp32 else []
        quantization.quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            nodes_to_exclude=excluded,
        )
        return out.read_bytes()


def _end_layers(nodes: list[tuple[str, str]]) -> list[str]:
    """Names of the first convolution and the last fully connected layer of a graph."""
    convs = [name for name, op in nodes if op == "Conv"]
    dense = [name for name, op in nodes if op in {"Gemm", "MatMul"}]
    return convs[:1] + dense[-1:]


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime CPU session behind the nn.Module interface of the model it replaces."""

    def __init__(self, onnx_model: bytes, *, threads: int = 1) -> None:
        super().__init__()
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads spin by default; in a worker they would take CPU from the thread
        # that decodes the next chunk.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        self.input_name: str = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)


# --- helpers --------------------------------------------------------------------------------


def _required(calibration: torch.Tensor | None) -> torch.Tensor:
    if calibration is None:  # pragma: no cover - optimise_for_cpu checks first
        raise ValueError("calibration images are required")
    return calibration.detach().to("cpu", torch.float32).contiguous()


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _require(name: str) -> Any:
    """Import an optional package (typed Any: onnxruntime ships no type information)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise EngineUnavailable(
            f"{name} is not installed: pip install onnxruntime onnx (see bench/README.md)"
        ) from exc
