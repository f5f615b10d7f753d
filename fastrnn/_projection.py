"""A layer's input projection ``x @ W_ih^T + b`` (T*B rows, both directions at once) and
its gradients, on a backend with GEMMs of its own (``backends.OWN_GEMMS``: Triton, and the
C++ backend, whose float32 products run on oneDNN where they are large enough: see
fastrnn._cpp).

Why not torch's addmm there: on CUDA it takes TF32 from ``torch.backends.cuda.matmul``
(IEEE by PyTorch's default), while torch.nn's LSTM on cuDNN computes its input projection
under the cuDNN RNN setting (TF32 by default), as fastrnn's recurrence kernels do. The
backend's ``linear`` takes that rule (``fastrnn.numerics.dot_precision`` of the weights)
and, for fp16/bf16 weights, half operands with fp32 accumulation, as cuDNN does.

``fastrnn::linear`` is a registered op with a fake kernel, so torch.compile traces a model
through it as an opaque node, and an autograd formula whose backward is the registered op
``fastrnn::linear_backward`` (dx and dW by the backend's GEMMs, db a sum over rows). A
backward under ``create_graph=True`` uses differentiable torch matmuls instead (as the
recurrence recomputes through the reference steps). Calls under a torch.func transform or
forward-mode AD, which a custom op without batching or forward rules cannot serve, use
torch's addmm (:func:`project`). Plain eager calls (``ops.plain_eager``) skip the op
dispatch: the same GEMMs and backward in an autograd.Function (``_EagerLinear``), about a
third of the op's host time per call with autograd (CPU, GEMMs stubbed: 8 against 25 us).
"""

import torch
from torch import Tensor

from . import backends
from .ops import needs_composite, plain_eager

__all__ = ["project"]


@torch.library.custom_op(
    "fastrnn::linear", mutates_args=(), schema="(Tensor x, Tensor w, Tensor? b, str backend) -> Tensor"
)
def linear(x, w, b, backend):
    """x (R, I) @ w^T (w (G, I)) + b (G,) -> (R, G) in x's dtype, by ``backend``'s GEMM."""
    return backends.gemm(backend, "linear")(x, w, b)


@linear.register_fake
def _(x, w, b, backend):
    return x.new_empty(x.shape[0], w.shape[0])


@torch.library.custom_op(
    "fastrnn::linear_backward",
    mutates_args=(),
    schema="(Tensor dy, Tensor x, Tensor w, bool need_dx, bool need_dw, str backend) -> (Tensor, Tensor)",
)
def linear_backward(dy, x, w, need_dx, need_dw, backend):
    """(dx = dy @ w (R, I) in dy's dtype, dw = dy^T x (G, I) in w's); an empty tensor for
    each not needed. Both are fresh tensors (the op may not return an input)."""
    return backends.gemm(backend, "linear_backward")(dy, x, w, need_dx, need_dw)


@linear_backward.register_fake
def _(dy, x, w, need_dx, need_dw, backend):
    return (dy.new_empty(x.shape) if need_dx else dy.new_empty(0), w.new_empty(w.shape) if need_dw else w.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, w, b, backend = inputs
    ctx.save_for_backward(x, w)
    ctx.backend, ctx.has_bias = backend, b is not None


def _backward(ctx, dy, direct=False):
    """The op's backward; ``direct``: _EagerLinear's, which calls the backend's GEMMs itself
    where the gradient is a plain tensor (a batched one, is_grads_batched, takes the
    differentiable form, as a create_graph backward does)."""
    x, w = ctx.saved_tensors
    need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
    if torch.is_grad_enabled() or (direct and not plain_eager((dy,))):
        dx = dy @ w if need_dx else None
        dw = dy.t() @ x if need_dw else None
    elif need_dx or need_dw:
        if direct:
            dx, dw = backends.gemm(ctx.backend, "linear_backward")(dy, x, w, need_dx, need_dw)
        else:
            dx, dw = torch.ops.fastrnn.linear_backward(dy, x, w, need_dx, need_dw, ctx.backend)
        dx, dw = (dx if need_dx else None), (dw if need_dw else None)
    else:
        dx = dw = None
    db = dy.sum(0) if ctx.has_bias and need_db else None
    return dx, dw, db, None


linear.register_autograd(_backward, setup_context=_setup_context)


class _EagerLinear(torch.autograd.Function):
    """``fastrnn::linear`` without the op dispatch, for plain eager calls (ops.plain_eager):
    the same GEMMs and backward, at a fraction of the op's host cost per call, which a
    launch-bound layer pays per layer and direction."""

    @staticmethod
    def forward(ctx, x, w, b, backend):
        _setup_context(ctx, (x, w, b, backend), None)
        return backends.gemm(backend, "linear")(x, w, b)

    @staticmethod
    def backward(ctx, dy):
        return _backward(ctx, dy, direct=True)


def project(x2d: Tensor, w: Tensor, b: Tensor | None, backend: str) -> Tensor:
    """x2d @ w^T + b: by the backend's GEMM where it has one (and no torch.func transform or
    forward-mode AD is active on the operands), else torch's addmm (the reference's numbers,
    and those of the C++ backend under a transform)."""
    if backend in backends.OWN_GEMMS:
        if plain_eager((x2d, w, b)):
            return _EagerLinear.apply(x2d, w, b, backend)
        if not needs_composite(x2d, w, b):
            return torch.ops.fastrnn.linear(x2d, w, b, backend)
    return torch.addmm(b, x2d, w.t()) if b is not None else x2d @ w.t()
