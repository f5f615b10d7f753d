"""Opt-in CUDA graphs for the step kernels: ``FASTRNN_CUDA_GRAPHS=1``.

The step kernels launch once or twice per time step, and Triton's launcher costs about as
much host time per launch as a step of the kernels runs (bench/NOTES-gpu.md). With the
variable set, a launcher (the forward or backward of one layer and direction: lstm, gru,
rnn) called on CUDA tensors runs its step loop as a captured CUDA graph: the first call
with a given signature (every tensor argument's shape, strides, dtype and device, every
other argument's value) warms the kernels up, copies the arguments into static tensors and
captures the launcher on them; that call and every later one with the same signature
copies its arguments into the static tensors, replays the graph, and returns copies of its
outputs (the next replay overwrites them). While a graph is captured, ``launch.plan``
chooses the sequence kernel where it fits and otherwise the step kernels, never a
persistent grid (whose barrier flag is read on the host), so with the variable set the
step kernels run where the persistent ones would be chosen; the warm-up plans the same way
(``launch.planned_as_captured``), so every kernel the capture launches is loaded before it.

Cost: per signature (at most ``MAX_GRAPHS`` per launcher, the least recently used dropped)
a static copy of the arguments and the graph's private memory pool, which holds every
tensor the launcher allocates (outputs and workspaces); per call the copies in and out,
device copies of the tensors a layer reads and writes once anyway. FASTRNN_TRITON_KERNEL
is part of the signature: a graph is captured per forced kernel shape.

Not yet run on a GPU. On CPU the tests check the signature cache and the copies in and
out with a stand-in for the capture, and that nothing else is ever captured; on a GPU the
same test runs the real capture (tests/test_triton.py, bench/NOTES-gpu.md step 4).
Without the variable, on CPU or meta tensors, or while the caller is itself capturing a
graph (torch.compile's "reduce-overhead", make_graphed_callables), a launcher runs as it is.
"""

from __future__ import annotations

import collections
import functools
import inspect
import os
from collections.abc import Callable

import torch

from ._common import forced_shape_name
from .launch import _signature, planned_as_captured

ENV = "FASTRNN_CUDA_GRAPHS"
MAX_GRAPHS = 8  # captured signatures kept per launcher


def enabled(device: torch.device) -> bool:
    """Whether a launcher on ``device`` runs as a CUDA graph: the variable set, a CUDA
    device, and no graph being captured already (the caller's own capture wins)."""
    if os.environ.get(ENV, "0") != "1" or device.type != "cuda":
        return False
    return not torch.cuda.is_current_stream_capturing()


def _capture(fn: Callable[[], tuple]) -> tuple[Callable[[], None], tuple]:
    """Warm ``fn`` up on a side stream, planned as the capture will plan it (the same
    kernels compiled and loaded before capture, as torch.cuda.graphs asks), capture one
    call of it; -> (replay, its static outputs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), planned_as_captured():
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def _static(a):
    """A contiguous copy of a tensor argument (an expanded one, such as the gradient of a
    sum, has zero strides, which a copy destination may not have); other values as they are."""
    return a.clone(memory_format=torch.contiguous_format) if isinstance(a, torch.Tensor) else a


def step_graphs(launcher: Callable) -> Callable:
    """``launcher`` (tensors and plain values in, a tuple of tensors out) run as a captured
    CUDA graph per argument signature when ``enabled``; as it is otherwise."""
    graphs: collections.OrderedDict = collections.OrderedDict()  # signature -> (replay, statics, outputs)
    params = inspect.signature(launcher)

    @functools.wraps(launcher)
    def run(*args, **kwargs):
        device = next((a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if device is None or not enabled(device):
            return launcher(*args, **kwargs)
        bound = params.bind(*args, **kwargs)
        bound.apply_defaults()
        full = tuple(bound.arguments.values())
        key = (forced_shape_name(), _signature(full, {}))
        # outside inference mode, so that tensors made by a first call under it stay
        # writable for later calls outside it
        with torch.inference_mode(False), torch.no_grad():
            if key in graphs:
                graphs.move_to_end(key)
                replay, statics, outputs = graphs[key]
            else:
                statics = [_static(a) for a in full]
                replay, outputs = _capture(lambda: launcher(*statics))
                graphs[key] = (replay, statics, outputs)
                if len(graphs) > MAX_GRAPHS:
                    graphs.popitem(last=False)
            for s, a in zip(statics, full, strict=True):
                if isinstance(a, torch.Tensor):
                    s.copy_(a)
            replay()
            return tuple(o.clone() for o in outputs)

    run.graphs = graphs  # for tests
    return run
