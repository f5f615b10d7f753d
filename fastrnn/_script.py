"""The LSTM variants (:mod:`fastrnn.variants`) inside torch.jit.trace, TorchScript and ONNX.

The variants have no torch.nn twin to stand in for them while a model is recorded, so the
per-direction time loops are written here once more from the equations of
:mod:`fastrnn.variants`, as TorchScript functions. Tracing records a call to a scripted
function with its loop intact, so a traced model runs any sequence length and batch size
(a trace of a Python loop would hold T copies of the step and silently give wrong results
for another T). Around the loops, layers, directions, packing and dropout are traceable
Python (:func:`record_layer`, :func:`record_cell`).

ONNX, the TorchScript exporter (``dynamo=False``): a PeepholeLSTM layer becomes ONNX's LSTM
operator with its peephole input P, one node per layer (``direction="bidirectional"`` for
both directions, ``sequence_lens`` for packed input; no projection, so ``proj_size > 0``
is a clear error); a LayerNormLSTM's loop becomes an ONNX Loop around LayerNormalization
(opset >= 17). The ``dynamo=True`` exporter cannot run TorchScript: there the same steps
run in torch's ``scan``, which torch.export keeps as one node and the exporter writes as
an ONNX Scan, for any T (projection included). Packed input does not get through
torch.export itself (``pack_padded_sequence`` is data-dependent), as for torch.nn's LSTM.

``torch.jit.script(module)``: :func:`scriptable` builds a module TorchScript compiles,
sharing the Parameter objects, whose forward calls the same scripted loops. Its
parameters are named per layer and direction (``directions.0.weight_ih``) rather than
``weight_ih_l0``.

Packed semantics as everywhere in fastrnn: step t of sequence b is active iff
t < lengths[b]; an inactive step keeps h and c and outputs zeros, so the reverse
direction starts from h0, c0 at each sequence's own last step.
"""

# TorchScript resolves the annotations below itself: no ``from __future__ import annotations``

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from . import cells, functional, reference

__all__ = [
    "peephole_lstm_loop",
    "layernorm_lstm_loop",
    "record",
    "record_layer",
    "record_cell",
    "scriptable",
    "is_variant",
]


def is_variant(module: nn.Module) -> bool:
    """True for the modules of :mod:`fastrnn.variants` (cells torch.nn does not have)."""
    spec = getattr(type(module), "_spec", None)
    return spec is not None and spec not in cells.TORCH_NN


# ------------------------------------------------------------------------------------------
# The time loops, one layer and direction; x_proj (T, B, 4H) is the input side of the gates
# ------------------------------------------------------------------------------------------
def _peephole_step(
    x_t: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, w_hr: Tensor | None, w_ch: Tensor, H: int
) -> tuple[Tensor, Tensor]:
    a = (x_t + torch.mm(h, w_hh.t())).chunk(4, 1)
    i = torch.sigmoid(a[0] + w_ch[0:H] * c)
    f = torch.sigmoid(a[1] + w_ch[H : 2 * H] * c)
    c_new = f * c + i * torch.tanh(a[2])
    h_new = torch.sigmoid(a[3] + w_ch[2 * H : 3 * H] * c_new) * torch.tanh(c_new)
    if w_hr is not None:
        h_new = torch.mm(h_new, w_hr.t())
    return h_new, c_new


def _layernorm_step(
    x_t: Tensor,
    h: Tensor,
    c: Tensor,
    w_hh: Tensor,
    ln_hh_weight: Tensor,
    ln_hh_bias: Tensor,
    ln_c_weight: Tensor,
    ln_c_bias: Tensor,
    eps: float,
    H: int,
) -> tuple[Tensor, Tensor]:
    r = F.layer_norm(torch.mm(h, w_hh.t()), [4 * H], ln_hh_weight, ln_hh_bias, eps)
    a = (x_t + r).chunk(4, 1)
    i, f, g, o = torch.sigmoid(a[0]), torch.sigmoid(a[1]), torch.tanh(a[2]), torch.sigmoid(a[3])
    c_new = F.layer_norm(f * c + i * g, [H], ln_c_weight, ln_c_bias, eps)
    return o * torch.tanh(c_new), c_new


# The loops below call the steps above, which TorchScript compiles with them; the dynamo
# exporter's loop (:func:`_scan_direction`) runs the same steps as Python.
@torch.jit.script
def peephole_lstm_loop(
    x_proj: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    w_ch: Tensor,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    T = x_proj.size(0)
    H = c0.size(1)
    h, c = h0, c0
    ys: list[Tensor] = []
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_new, c_new = _peephole_step(x_proj[t], h, c, w_hh, w_hr, w_ch, H)
        if lengths is not None:
            m = (lengths > t).unsqueeze(1)
            h = torch.where(m, h_new, h)
            c = torch.where(m, c_new, c)
            ys.append(torch.where(m, h_new, torch.zeros_like(h_new)))
        else:
            h, c = h_new, c_new
            ys.append(h_new)
    y = torch.stack(ys)
    if reverse:
        y = y.flip([0])
    return y, h, c


@torch.jit.script
def layernorm_lstm_loop(
    x_proj: Tensor,
    w_hh: Tensor,
    ln_hh_weight: Tensor,
    ln_hh_bias: Tensor,
    ln_c_weight: Tensor,
    ln_c_bias: Tensor,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor,
    masked: bool,
    reverse: bool,
    eps: float,
    H: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """x_proj is LN_ih(x @ W_ih^T), normalised for all steps before the loop. No Optional
    arguments, which ONNX's Loop body would carry as Optional values ONNX Runtime rejects:
    absent LN shifts come as zeros (adding 0 is exact), ``lengths`` is read iff ``masked``.
    H (the hidden size) is an argument, not c0's size: LayerNormalization needs it constant."""
    T = x_proj.size(0)
    h, c = h0, c0
    ys: list[Tensor] = []
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_new, c_new = _layernorm_step(x_proj[t], h, c, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, eps, H)
        if masked:
            m = (lengths > t).unsqueeze(1)
            h = torch.where(m, h_new, h)
            c = torch.where(m, c_new, c)
            ys.append(torch.where(m, h_new, torch.zeros_like(h_new)))
        else:
            h, c = h_new, c_new
            ys.append(h_new)
    y = torch.stack(ys)
    if reverse:
        y = y.flip([0])
    return y, h, c


@torch.jit.script
def _zero_state(x: Tensor, n: int, size: int, batch_dim: int) -> Tensor:
    # scripted so that a trace reads the batch size from the input instead of baking it in
    return torch.zeros([n, x.size(batch_dim), size], dtype=x.dtype, device=x.device)


_NO_LENGTHS = torch.zeros(0, dtype=torch.int64)


def _shift(w: dict, name: str) -> Tensor:
    b = w.get(f"{name}_bias")
    return b if b is not None else torch.zeros_like(w[f"{name}_weight"])


def _scan(step, x_proj: Tensor, h0: Tensor, c0: Tensor, lengths: Tensor | None, reverse: bool):
    """The loop for the dynamo exporter: torch's ``scan``, which torch.export keeps as one
    node and the exporter writes as an ONNX Scan (valid for any T). ``step(x_t, h, c)``."""
    try:
        from torch._higher_order_ops.scan import scan
    except ImportError:  # pragma: no cover - torch without scan
        raise ValueError(
            "this torch has no scan operator for torch.onnx.export(..., dynamo=True) to record a fastrnn "
            "LSTM variant's time loop; export with dynamo=False (the TorchScript exporter)"
        ) from None
    h0, c0 = h0.clone(), c0.clone()  # scan's carries may not alias each other (h0 is c0 for zeros)
    if lengths is None:

        def body(carry, x_t):
            h, c = step(x_t, carry[0], carry[1])
            return (h, c), h.clone()  # scan's outputs may not alias its carry

        (h, c), y = scan(body, (h0, c0), x_proj, reverse=reverse)
        return y, h, c
    T = x_proj.shape[0]
    active = (torch.arange(T, device=x_proj.device).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(2)

    def masked(carry, xs):
        x_t, m = xs
        h, c = step(x_t, carry[0], carry[1])
        return (torch.where(m, h, carry[0]), torch.where(m, c, carry[1])), torch.where(m, h, 0.0)

    (h, c), y = scan(masked, (h0, c0), (x_proj, active), reverse=reverse)
    return y, h, c


def _direction(spec: cells.Cell, x: Tensor, w: dict, h0, c0, lengths, reverse: bool, eps: float, dynamo=False):
    """One layer and direction of a variant: the input projection for all steps, then the
    loop (TorchScript, or torch's scan for the dynamo exporter)."""
    G = w["weight_ih"].shape[0]
    H = G // 4
    if spec is cells.PEEPHOLE_LSTM:
        x_proj = torch.matmul(x, w["weight_ih"].t())
        if "bias_ih" in w:
            x_proj = x_proj + (w["bias_ih"] + w["bias_hh"])
        w_hh, w_hr, w_ch = w["weight_hh"], w.get("weight_hr"), w["weight_ch"]
        if dynamo:
            return _scan(
                lambda x_t, h, c: _peephole_step(x_t, h, c, w_hh, w_hr, w_ch, H), x_proj, h0, c0, lengths, reverse
            )
        return peephole_lstm_loop(x_proj, w_hh, w_hr, w_ch, h0, c0, lengths, reverse)
    x_proj = F.layer_norm(torch.matmul(x, w["weight_ih"].t()), (G,), w["ln_ih_weight"], w.get("ln_ih_bias"), eps)
    if dynamo:
        args = (w["weight_hh"], w["ln_hh_weight"], _shift(w, "ln_hh"), w["ln_c_weight"], _shift(w, "ln_c"), eps, H)
        return _scan(lambda x_t, h, c: _layernorm_step(x_t, h, c, *args), x_proj, h0, c0, lengths, reverse)
    return layernorm_lstm_loop(
        x_proj,
        w["weight_hh"],
        w["ln_hh_weight"],
        _shift(w, "ln_hh"),
        w["ln_c_weight"],
        _shift(w, "ln_c"),
        h0,
        c0,
        lengths if lengths is not None else _NO_LENGTHS,
        lengths is not None,
        reverse,
        eps,
        G // 4,
    )


# ------------------------------------------------------------------------------------------
# ONNX: PeepholeLSTM as ONNX's LSTM operator
# ------------------------------------------------------------------------------------------
_ONNX_INT32 = 6  # onnx.TensorProto.INT32


def _onnx_const(g, values):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _onnx_rows(g, w, blocks, H: int, shape):
    """Rows [k*H, (k+1)*H) of w for k in ``blocks``, concatenated and reshaped to ``shape``:
    ONNX's gate order from fastrnn's, in the graph (the parameters stay fastrnn's)."""
    parts = [
        g.op("Slice", w, _onnx_const(g, [k * H]), _onnx_const(g, [(k + 1) * H]), _onnx_const(g, [0])) for k in blocks
    ]
    return g.op("Reshape", g.op("Concat", *parts, axis_i=0), _onnx_const(g, shape))


class _PeepholeLayerOnnx(torch.autograd.Function):
    """One PeepholeLSTM layer (both directions), recorded as one ONNX LSTM node.

    apply(x (T, B, I), h0 (D, B, H), c0 (D, B, H), lengths (B,) or None, names, *weights):
    ``names`` the spec names of one direction's parameters, ``weights`` those of every
    direction in order. Returns (y (T, B, D*H), h_n (D, B, H), c_n (D, B, H)). forward
    computes it (the exporter runs it for the output shapes); symbolic writes the node.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, lengths, names, *weights):
        # The exporter traces forward into a subgraph it does not use (symbolic writes the
        # node) but still lowers, which a scripted loop's call fails: the eager reference loop.
        n = len(names)
        ys, hs, cs = [], [], []
        for d in range(len(weights) // n):
            w = dict(zip(names, weights[d * n : (d + 1) * n], strict=False))
            x_proj = torch.matmul(x, w["weight_ih"].t())
            if "bias_ih" in w:
                x_proj = x_proj + (w["bias_ih"] + w["bias_hh"])
            y, h, c = reference.recurrence(
                cells.PEEPHOLE_LSTM, x_proj, w["weight_hh"], (None, w["weight_ch"]), (h0[d], c0[d]), lengths, d == 1
            )
            ys.append(y)
            hs.append(h)
            cs.append(c)
        return torch.cat(ys, -1), torch.stack(hs), torch.stack(cs)

    @staticmethod
    def symbolic(g, x, h0, c0, lengths, names, *weights):
        n = len(names)
        D = len(weights) // n
        w_shape = weights[0].type().sizes()
        H, I = w_shape[0] // 4, w_shape[1]
        gates = (0, 3, 1, 2)  # ONNX's i, o, f, c from fastrnn's i, f, g (= c), o
        W, R, B, P = [], [], [], []
        for d in range(D):
            w = dict(zip(names, weights[d * n : (d + 1) * n], strict=False))
            W.append(_onnx_rows(g, w["weight_ih"], gates, H, [1, 4 * H, I]))
            R.append(_onnx_rows(g, w["weight_hh"], gates, H, [1, 4 * H, H]))
            if "bias_ih" in w:
                b_ih = _onnx_rows(g, w["bias_ih"], gates, H, [1, 4 * H])
                b_hh = _onnx_rows(g, w["bias_hh"], gates, H, [1, 4 * H])
                B.append(g.op("Concat", b_ih, b_hh, axis_i=1))
            P.append(_onnx_rows(g, w["weight_ch"], (0, 2, 1), H, [1, 3 * H]))  # ONNX: i, o, f

        def stack(parts):
            return parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis_i=0)

        absent = _onnx_none(g)
        y, h_n, c_n = g.op(
            "LSTM",
            x,
            stack(W),
            stack(R),
            stack(B) if B else absent,
            absent if lengths is None else g.op("Cast", lengths, to_i=_ONNX_INT32),
            h0,
            c0,
            stack(P),
            hidden_size_i=H,
            direction_s="bidirectional" if D == 2 else "forward",
            outputs=3,
        )
        # Y (T, D, B, H) -> (T, B, D*H)
        y = g.op("Reshape", g.op("Transpose", y, perm_i=[0, 2, 1, 3]), _onnx_const(g, [0, 0, -1]))
        return y, h_n, c_n


def _onnx_none(g):
    """An absent optional input of an ONNX node."""
    n = g.op("prim::Constant")
    n.setType(torch._C.OptionalType.ofTensor())
    return n


# ------------------------------------------------------------------------------------------
# Recording: the forward of a variant while torch.jit.trace or torch.onnx.export records it
# ------------------------------------------------------------------------------------------
def _check_recordable(module: nn.Module, onnx: bool, dynamo: bool) -> None:
    if onnx and not dynamo and getattr(module, "proj_size", 0) > 0:
        raise ValueError(
            f"fastrnn.{type(module).__name__} with proj_size > 0 cannot be exported with the TorchScript "
            "ONNX exporter: ONNX's LSTM operator has no projection (an LSTM node followed by a MatMul "
            "is not equivalent, since the projected state feeds the next step). "
            "torch.onnx.export(..., dynamo=True) exports it as a Scan; torch.jit.trace and "
            "torch.jit.script support it too."
        )


def _weights(module: nn.Module, index: int) -> dict:
    """Layer-direction ``index``'s parameters by spec name (``weight_ih``, ...)."""
    return functional._layer_weights(
        module._spec, module._flat_weights, module.bias, getattr(module, "proj_size", 0) > 0, index
    )


def record_layer(module: nn.Module, input, hx, *, onnx: bool, dynamo: bool):
    """A variant layer's forward in ops that torch.jit.trace and both ONNX exporters record
    for any T and B: the scripted loops (PeepholeLSTM for the TorchScript ONNX exporter:
    the LSTM operator; for the dynamo exporter: scan)."""
    _check_recordable(module, onnx, dynamo)
    spec = module._spec
    packed = isinstance(input, PackedSequence)
    D = 2 if module.bidirectional else 1
    H = module.hidden_size
    P = module.proj_size if getattr(module, "proj_size", 0) > 0 else H
    L = module.num_layers
    if packed:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        batched = True
        x, lengths = functional.unpack(PackedSequence(data, batch_sizes))
    else:
        if input.dim() not in (2, 3):
            raise ValueError(f"{type(module).__name__}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(0 if module.batch_first else 1)
        x = x.transpose(0, 1) if module.batch_first else x
        lengths = None
    if hx is None and dynamo:
        h0 = torch.zeros(L * D, x.shape[1], P, dtype=x.dtype, device=x.device)
        c0 = torch.zeros(L * D, x.shape[1], H, dtype=x.dtype, device=x.device)
    elif hx is None:
        h0, c0 = _zero_state(x, L * D, P, 1), _zero_state(x, L * D, H, 1)
    else:
        h0, c0 = hx
        if not batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        if packed:
            h0, c0 = module.permute_hidden((h0, c0), sorted_indices)
    module.check_forward_args(x if not module.batch_first else x.transpose(0, 1), (h0, c0), None)
    eps = float(getattr(module, "eps", 0.0))
    h_n, c_n = [], []
    layer_in = x
    for layer in range(L):
        if onnx and not dynamo and spec is cells.PEEPHOLE_LSTM:
            groups = [_weights(module, layer * D + d) for d in range(D)]
            names = tuple(groups[0])
            flat = [w for g in groups for w in g.values()]
            rows = slice(layer * D, (layer + 1) * D)
            layer_in, h, c = _PeepholeLayerOnnx.apply(layer_in, h0[rows], c0[rows], lengths, names, *flat)
            h_n.append(h)
            c_n.append(c)
        else:
            outs = []
            for d in range(D):
                i = layer * D + d
                w = _weights(module, i)
                y, h, c = _direction(spec, layer_in, w, h0[i], c0[i], lengths, d == 1, eps, dynamo)
                outs.append(y)
                h_n.append(h.unsqueeze(0))
                c_n.append(c.unsqueeze(0))
            layer_in = torch.cat(outs, -1) if D > 1 else outs[0]
        if module.dropout > 0 and module.training and layer < L - 1:
            layer_in = F.dropout(layer_in, module.dropout, training=True)
    output, hidden = layer_in, (torch.cat(h_n), torch.cat(c_n))
    if packed:
        # the new pack's own batch_sizes (equal to the input's): the TorchScript ONNX exporter
        # drops a pad_packed_sequence only when it reads the pack_padded_sequence just before
        out = pack_padded_sequence(output, lengths.cpu(), enforce_sorted=True)
        output = PackedSequence(out.data, out.batch_sizes, sorted_indices, unsorted_indices)
        return output, module.permute_hidden(hidden, unsorted_indices)
    if module.batch_first:
        output = output.transpose(0, 1)
    if not batched:
        output = output.squeeze(0 if module.batch_first else 1)
        hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
    return output, hidden


def record(module: nn.Module, input, hx, *, onnx: bool, dynamo: bool):
    """A variant's forward while torch.jit.trace or torch.onnx.export records it."""
    from .modules import _Cell

    record = record_cell if isinstance(module, _Cell) else record_layer
    return record(module, input, hx, onnx=onnx, dynamo=dynamo)


def record_cell(module: nn.Module, input: Tensor, hx, *, onnx: bool, dynamo: bool):
    """A variant cell's forward, recorded as one step of its layer."""
    _check_recordable(module, onnx, dynamo)
    if input.dim() not in (1, 2):
        raise ValueError(f"{module._name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    batched = input.dim() == 2
    x = input if batched else input.unsqueeze(0)
    H = module.hidden_size
    if hx is None and dynamo:
        h0 = c0 = torch.zeros(x.shape[0], H, dtype=x.dtype, device=x.device)
    elif hx is None:
        h0 = c0 = _zero_state(x, 1, H, 0)[0]
    else:
        h0, c0 = hx if batched else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
    w = {p.name: getattr(module, p.name) for p in module._spec.layer_params(module.bias, False)}
    if onnx and not dynamo and module._spec is cells.PEEPHOLE_LSTM:
        _, h, c = _PeepholeLayerOnnx.apply(
            x.unsqueeze(0), h0.unsqueeze(0), c0.unsqueeze(0), None, tuple(w), *w.values()
        )
        h, c = h[0], c[0]
    else:
        eps = float(getattr(module, "eps", 0.0))
        _, h, c = _direction(module._spec, x.unsqueeze(0), w, h0, c0, None, False, eps, dynamo)
    return (h, c) if batched else (h[0], c[0])


# ------------------------------------------------------------------------------------------
# torch.jit.script: a module TorchScript compiles, sharing the variant's Parameters
# ------------------------------------------------------------------------------------------
class _PeepholeDirection(nn.Module):
    """One layer and direction of a PeepholeLSTM (the Parameter objects of the module it
    was built from, under their spec names)."""

    __constants__ = ("reverse",)

    def __init__(self, w: dict, reverse: bool):
        super().__init__()
        self.reverse = reverse
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_ch"):
            self.register_parameter(name, w.get(name))

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        x_proj = torch.matmul(x, self.weight_ih.t())
        b_ih, b_hh = self.bias_ih, self.bias_hh
        if b_ih is not None and b_hh is not None:
            x_proj = x_proj + (b_ih + b_hh)
        return peephole_lstm_loop(x_proj, self.weight_hh, self.weight_hr, self.weight_ch, h0, c0, lengths, self.reverse)


class _LayerNormDirection(nn.Module):
    """One layer and direction of a LayerNormLSTM."""

    __constants__ = ("reverse", "eps", "hidden_size")

    def __init__(self, w: dict, reverse: bool, eps: float):
        super().__init__()
        self.reverse, self.eps, self.hidden_size = reverse, eps, w["weight_hh"].shape[1]
        for name in ("weight_ih", "weight_hh", "ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias"):
            self.register_parameter(name, w.get(name))
        self.register_parameter("ln_c_weight", w["ln_c_weight"])
        self.register_parameter("ln_c_bias", w.get("ln_c_bias"))

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        H = self.hidden_size
        x_proj = F.layer_norm(
            torch.matmul(x, self.weight_ih.t()), [4 * H], self.ln_ih_weight, self.ln_ih_bias, self.eps
        )
        b_hh, b_c = self.ln_hh_bias, self.ln_c_bias
        if b_hh is None:
            b_hh = torch.zeros_like(self.ln_hh_weight)
        if b_c is None:
            b_c = torch.zeros_like(self.ln_c_weight)
        masked = lengths is not None
        if lengths is None:
            lengths = torch.zeros(0, dtype=torch.int64)
        return layernorm_lstm_loop(
            x_proj,
            self.weight_hh,
            self.ln_hh_weight,
            b_hh,
            self.ln_c_weight,
            b_c,
            h0,
            c0,
            lengths,
            masked,
            self.reverse,
            self.eps,
            H,
        )


def _direction_module(module: nn.Module, w: dict, reverse: bool) -> nn.Module:
    if module._spec is cells.PEEPHOLE_LSTM:
        return _PeepholeDirection(w, reverse)
    return _LayerNormDirection(w, reverse, float(module.eps))


class _ScriptedLayer(nn.Module):
    """What ``torch.jit.script`` compiles for a PeepholeLSTM or LayerNormLSTM: the same
    function of padded (or unbatched) input and optional (h_0, c_0), on the same Parameter
    objects (``directions.{layer*D + d}.weight_ih``, ...). TorchScript takes no
    PackedSequence here: pack inside a traced model instead."""

    __constants__ = ("num_layers", "num_directions", "hidden_size", "out_size", "batch_first", "dropout")

    def __init__(self, module: nn.Module):
        super().__init__()
        D = 2 if module.bidirectional else 1
        self.num_layers, self.num_directions, self.hidden_size = module.num_layers, D, module.hidden_size
        proj = getattr(module, "proj_size", 0)
        self.out_size = proj if proj > 0 else module.hidden_size
        self.batch_first, self.dropout = module.batch_first, float(module.dropout)
        self.training = module.training
        self.directions = nn.ModuleList(
            _direction_module(module, _weights(module, i), i % D == 1) for i in range(module.num_layers * D)
        )

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError("Expected input to be 2D or 3D")
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        x = input if batched else input.unsqueeze(batch_dim)
        if self.batch_first:
            x = x.transpose(0, 1)
        n = self.num_layers * self.num_directions
        if hx is None:
            h0 = torch.zeros([n, x.size(1), self.out_size], dtype=x.dtype, device=x.device)
            c0 = torch.zeros([n, x.size(1), self.hidden_size], dtype=x.dtype, device=x.device)
        else:
            h0, c0 = hx
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        outs: list[Tensor] = []
        layer_in = x
        for i, direction in enumerate(self.directions):
            y, h, c = direction(layer_in, h0[i], c0[i], None)
            outs.append(y)
            hs.append(h)
            cs.append(c)
            if len(outs) == self.num_directions:
                layer_in = torch.cat(outs, -1)
                outs = []
                if self.dropout > 0 and self.training and i < n - 1:
                    layer_in = F.dropout(layer_in, self.dropout, True)
        output = layer_in.transpose(0, 1) if self.batch_first else layer_in
        h_n, c_n = torch.stack(hs), torch.stack(cs)
        if not batched:
            return output.squeeze(batch_dim), (h_n.squeeze(1), c_n.squeeze(1))
        return output, (h_n, c_n)


class _ScriptedCell(nn.Module):
    """What ``torch.jit.script`` compiles for a PeepholeLSTMCell or LayerNormLSTMCell."""

    __constants__ = ("hidden_size",)

    def __init__(self, module: nn.Module):
        super().__init__()
        self.hidden_size = module.hidden_size
        w = {p.name: getattr(module, p.name) for p in module._spec.layer_params(module.bias, False)}
        self.cell = _direction_module(module, w, False)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if input.dim() != 1 and input.dim() != 2:
            raise ValueError("Expected input to be 1D or 2D")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            h0 = torch.zeros([x.size(0), self.hidden_size], dtype=x.dtype, device=x.device)
            c0 = h0
        else:
            h0, c0 = hx
            if not batched:
                h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
        _, h, c = self.cell(x.unsqueeze(0), h0, c0, None)
        if not batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c


def scriptable(module: nn.Module) -> nn.Module:
    """``__prepare_scriptable__`` of a variant: a module TorchScript compiles, computing the
    same function with the scripted loops on the same Parameter objects."""
    from .modules import _Cell

    out = _ScriptedCell(module) if isinstance(module, _Cell) else _ScriptedLayer(module)
    # torch.jit.script remembers prepared modules by id() while it walks a parent: were the
    # variant freed once its parent holds the new module, a module created next could reuse
    # its id and be taken for it. A tuple (TorchScript skips it) keeps the variant alive.
    out._fastrnn_source = (module,)
    return out
