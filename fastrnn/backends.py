"""Backend selection: ``"auto" | "triton" | "cpp" | "reference"``.

A backend is a module that runs the time loops, and nothing else: for every cell of
:mod:`fastrnn.cells` it has ``<cell>_forward(*cell.forward_args, workspace)`` returning
``cell.forward_results`` and ``<cell>_backward(*cell.backward_args)`` returning
``dx_proj``, the gradients of the initial states and ``cell.loop_grads``. Workspaces and
backward results are in the accumulation dtype (:func:`fastrnn.numerics.acc_dtype`); a
forward under ``workspace=False`` may return empty workspaces. The input projection, layers,
directions, packing, dropout and every weight-gradient GEMM are shared
(:mod:`fastrnn.functional`, :mod:`fastrnn.ops`); a backend may supply those GEMMs' arithmetic
(``OWN_GEMMS``, :func:`gemm`). The three backends:
:mod:`fastrnn.reference` (plain PyTorch, any device and dtype), :mod:`fastrnn._cpp`
(C++, CPU) and ``fastrnn.kernels`` (Triton).

Resolution of ``"auto"``: the ``FASTRNN_BACKEND`` environment variable if set, else triton
for CUDA tensors and cpp for CPU tensors; when that fast backend is missing, the reference
runs instead and a warning says why, once per process and backend. Meta tensors run the
reference whatever the choice: they hold no data for a kernel, only shapes.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

from .cells import CELLS

__all__ = ["BACKENDS", "available_backends", "resolve", "implementation", "gemm", "OWN_GEMMS", "check_name"]

BACKENDS = ("auto", "triton", "cpp", "reference")
# Not a user-facing choice: autograd straight through fastrnn.reference's cells, no custom
# ops. fastrnn.testing uses it as the oracle every backend is measured against.
ORACLE = "oracle"
ENTRY_POINTS = tuple(f"{name}_{d}" for name in CELLS for d in ("forward", "backward"))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class _Backend:
    name: str
    module: str  # import path of the module holding the entry points
    runs_on: Callable[[torch.device], bool]
    devices: str  # for messages
    # dtypes the kernels take; float16/bfloat16 outside this set run on float32 kernels
    dtypes: tuple = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


_REGISTRY = {
    "reference": _Backend("reference", "fastrnn.reference", lambda d: True, "any device"),
    "cpp": _Backend("cpp", "fastrnn._cpp", lambda d: d.type == "cpu", "CPU tensors", (torch.float32, torch.float64)),
    "triton": _Backend(
        "triton",
        "fastrnn.kernels",
        lambda d: d.type == "cuda" or (d.type == "cpu" and _interpreting()),
        "CUDA tensors (CPU tensors with TRITON_INTERPRET=1)",
    ),
}


# What meta tensors (no data: deferred initialisation, shape inference) resolve to, whatever
# backend was asked for: the reference equations, which give torch.nn's shapes on any device.
# kernels/rehearsal.py sets it to "triton" to record the launches a layer would make.
_META_BACKEND = "reference"


def _import(module: str) -> ModuleType:
    """Import a backend module. In a source checkout the Triton kernels sit in the top-level
    ``kernels/`` folder; an installed fastrnn ships them as ``fastrnn.kernels``. Load them
    under that name either way, from the checkout this fastrnn was imported from when it is
    one: an editable install elsewhere maps ``fastrnn.kernels`` to its own checkout, which
    would otherwise run another copy's kernels beside this copy's Python."""
    if module != "fastrnn.kernels" or module in sys.modules:
        return importlib.import_module(module)
    here = Path(__file__).resolve().parent
    src = here.parent / "kernels" / "__init__.py"
    if (here / "kernels").is_dir() or not src.is_file():  # installed: fastrnn/kernels/ is the package
        return importlib.import_module(module)
    spec = importlib.util.spec_from_file_location(module, src, submodule_search_locations=[str(src.parent)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[module]
        raise
    return mod


def _load(name: str) -> tuple[ModuleType | None, str]:
    """A backend's module: (module, "") or (None, why it is unavailable). Triton runs on a
    CUDA device or in its interpreter, and on meta tensors only for a rehearsal."""
    if name == "triton" and not torch.cuda.is_available() and not _interpreting() and _META_BACKEND != "triton":
        return None, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU)"
    return _import_backend(name)


@cache
def _import_backend(name: str) -> tuple[ModuleType | None, str]:
    """Import a backend once; returns (module, "") or (None, why it is unavailable)."""
    try:
        mod = _import(_REGISTRY[name].module)
    except Exception as e:  # an ImportError, or a build/ABI problem surfacing at import
        return None, f"{type(e).__name__}: {e}"
    missing = [e for e in ENTRY_POINTS if not hasattr(mod, e)]
    if missing:
        return None, f"{_REGISTRY[name].module} lacks {', '.join(missing)}"
    return mod, ""


def available_backends() -> dict[str, str]:
    """Each concrete backend and ``"available"`` or ``"unavailable: <reason>"``."""
    out = {}
    for name in ("triton", "cpp", "reference"):
        mod, why = _load(name)
        out[name] = "available" if mod is not None else f"unavailable: {why}"
    return out


def check_name(backend: str) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return backend


_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_MODULE_CALL = str(Path(torch.nn.modules.module.__file__).resolve())


def _user_stacklevel() -> int:
    """The stacklevel of the first frame outside fastrnn and torch.nn's Module.__call__ as
    seen from the caller of this function: a warning then points at the user's own line,
    whether it came through a layer, a cell or functional."""
    frame, level = sys._getframe(2), 2
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE_DIR) or frame.f_code.co_filename == _MODULE_CALL
    ):
        frame, level = frame.f_back, level + 1
    return level


@cache
def _warn_fallback(wanted: str, why: str) -> None:
    warnings.warn(
        f"fastrnn: the {wanted} backend is unavailable ({why}); running the pure-PyTorch "
        "reference backend instead (correct, but slow)",
        RuntimeWarning,
        stacklevel=_user_stacklevel(),
    )


@torch.compiler.assume_constant_result
def resolve(backend: str, device: torch.device) -> str:
    """Turn a user's backend choice into the concrete backend that runs on ``device``.

    Under torch.compile this runs once, at trace time, and its answer is baked into the
    graph (changing FASTRNN_BACKEND afterwards needs torch._dynamo.reset())."""
    if backend == ORACLE:
        return ORACLE
    check_name(backend)
    if device.type == "meta":
        return _META_BACKEND
    if backend == "auto":
        env = os.environ.get("FASTRNN_BACKEND", "").strip()
        if env and env != "auto":
            backend = env
            if backend not in BACKENDS:
                raise ValueError(f"FASTRNN_BACKEND must be one of {', '.join(map(repr, BACKENDS))}, got {env!r}")
    if backend == "auto":
        wanted = "triton" if device.type == "cuda" else "cpp"
        if not _REGISTRY[wanted].runs_on(device):
            return "reference"
        mod, why = _load(wanted)
        if mod is None:
            _warn_fallback(wanted, why)
            return "reference"
        return wanted
    spec = _REGISTRY[backend]
    if not spec.runs_on(device):
        raise RuntimeError(f"fastrnn backend {backend!r} runs on {spec.devices}, but the input is on {device}")
    mod, why = _load(backend)
    if mod is None:
        raise RuntimeError(f"fastrnn backend {backend!r} is unavailable: {why}")
    return backend


def native_dtype(backend: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype ``backend``'s kernels run for tensors of ``dtype``: ``dtype`` itself, or
    float32 for float16/bfloat16 on a backend without half-precision kernels (state and
    accumulation are float32 for half inputs on every backend anyway, see DESIGN.md)."""
    spec = _REGISTRY.get(backend)
    if spec is None or dtype in spec.dtypes or dtype not in (torch.float16, torch.bfloat16):
        return dtype
    return torch.float32


# Backends with GEMMs of their own for a layer's products outside the time loops: entry
# points ``linear(x, w, b)`` and ``linear_backward(dy, x, w, need_dx, need_dw)`` (the input
# projection and its gradients, see fastrnn._projection) and ``weight_grad(dg (R, M), x (R, N),
# weight) -> dg^T x`` (M, N) in the accumulation dtype (the weight gradients after the loop). Triton's take the
# recurrence's precision rule and operands (fastrnn.kernels.gemm); the C++ backend's run on
# oneDNN where it takes a float32 product (about twice MKL's rate on the AMD CPUs here, see
# csrc/gemm.h). The reference uses torch matmuls.
OWN_GEMMS = ("triton", "cpp")


def gemm(backend: str, entry: str) -> Callable | None:
    """A backend's own GEMM ``entry`` (see OWN_GEMMS), or None for the torch matmuls."""
    return implementation(backend, entry) if backend in OWN_GEMMS else None


def implementation(backend: str, entry: str) -> Callable:
    """The function ``entry`` of a resolved backend."""
    mod, why = _load(backend)
    if mod is None:
        raise RuntimeError(f"fastrnn backend {backend!r} is unavailable: {why}")
    return getattr(mod, entry)
