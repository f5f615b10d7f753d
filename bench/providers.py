"""What the benchmark compares: each provider builds a callable layer from one shared
torch.nn module (same weights), so every provider computes the same function.

* ``fastrnn[<backend>]`` for each fastrnn backend that runs on the device
* ``torch.nn``: cuDNN on GPU, oneDNN / native ATen on CPU
* ``jit_premul``: TorchScript loop with the input projection hoisted out of the loop (the
  strongest variant of PyTorch's benchmarks/fastrnns); for the LSTM variants torch.nn lacks
  (PeepholeLSTM, LayerNormLSTM) it is the peer users write today, on the fastrnn module's own
  parameter tensors
* ``fastrnn.LSTM[<backend>]`` (variant cells only): fastrnn's plain LSTM of the same size, what
  the variant's extra terms cost on top of it
* ``python_loop``: a Python loop over the torch.nn cell, what users write for variants today
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastrnn

from .configs import VARIANTS

NN = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
CELL = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}
FAST = {
    "lstm": fastrnn.LSTM,
    "gru": fastrnn.GRU,
    "rnn": fastrnn.RNN,
    "peephole_lstm": fastrnn.PeepholeLSTM,
    "layernorm_lstm": fastrnn.LayerNormLSTM,
}


@torch.jit.script
def _lstm_premul(x_proj: Tensor, h: Tensor, c: Tensor, w_hh_t: Tensor) -> Tensor:
    outs: list[Tensor] = []
    for t in range(x_proj.size(0)):
        gates = x_proj[t] + h.mm(w_hh_t)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs)


@torch.jit.script
def _gru_premul(x_proj: Tensor, h: Tensor, w_hh_t: Tensor, b_hh: Tensor) -> Tensor:
    outs: list[Tensor] = []
    for t in range(x_proj.size(0)):
        xr, xz, xn = x_proj[t].chunk(3, 1)
        hr, hz, hn = (h.mm(w_hh_t) + b_hh).chunk(3, 1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs)


@torch.jit.script
def _rnn_premul(x_proj: Tensor, h: Tensor, w_hh_t: Tensor) -> Tensor:
    outs: list[Tensor] = []
    for t in range(x_proj.size(0)):
        h = torch.tanh(x_proj[t] + h.mm(w_hh_t))
        outs.append(h)
    return torch.stack(outs)


class JitPremul(nn.Module):
    """One layer: x_proj = x @ W_ih^T + b (one GEMM), then a TorchScript step loop."""

    def __init__(self, cell: str, ref: nn.Module):
        super().__init__()
        self.cell, self.ref = cell, ref

    def forward(self, x):
        r = self.ref
        T, B, _ = x.shape
        h = x.new_zeros(B, r.hidden_size)
        if self.cell == "gru":  # b_hh stays inside the reset product
            x_proj = torch.addmm(r.bias_ih_l0, x.reshape(T * B, -1), r.weight_ih_l0.t()).view(T, B, -1)
            return _gru_premul(x_proj, h, r.weight_hh_l0.t(), r.bias_hh_l0), None
        x_proj = torch.addmm(r.bias_ih_l0 + r.bias_hh_l0, x.reshape(T * B, -1), r.weight_ih_l0.t()).view(T, B, -1)
        if self.cell == "lstm":
            return _lstm_premul(x_proj, h, torch.zeros_like(h), r.weight_hh_l0.t()), None
        return _rnn_premul(x_proj, h, r.weight_hh_l0.t()), None


# The LSTM variants torch.nn lacks, one layer as PyTorch's benchmarks/fastrnns writes its
# custom LSTMs (gate order i, f, g, o; LayerNorm through F.layer_norm, ATen's fused kernel).
@torch.jit.script
def _peephole_premul(
    x_proj: Tensor, h: Tensor, c: Tensor, w_hh_t: Tensor, w_ch: Tensor, w_hr_t: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    p_i, p_f, p_o = w_ch.chunk(3)
    outs: list[Tensor] = []
    for t in range(x_proj.size(0)):
        a_i, a_f, a_g, a_o = (x_proj[t] + h.mm(w_hh_t)).chunk(4, 1)
        i = torch.sigmoid(a_i + p_i * c)
        f = torch.sigmoid(a_f + p_f * c)
        c = f * c + i * torch.tanh(a_g)
        o = torch.sigmoid(a_o + p_o * c)
        h = o * torch.tanh(c)
        if w_hr_t is not None:
            h = h.mm(w_hr_t)
        outs.append(h)
    return torch.stack(outs), h, c


@torch.jit.script
def _layernorm_premul(
    x_proj: Tensor,
    h: Tensor,
    c: Tensor,
    w_hh_t: Tensor,
    ln_hh_weight: Tensor,
    ln_hh_bias: Tensor,
    ln_c_weight: Tensor,
    ln_c_bias: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    G, H = x_proj.size(2), c.size(1)
    outs: list[Tensor] = []
    for t in range(x_proj.size(0)):
        gates = x_proj[t] + F.layer_norm(h.mm(w_hh_t), [G], ln_hh_weight, ln_hh_bias, eps)
        i, f, g, o = gates.chunk(4, 1)
        s = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        c = F.layer_norm(s, [H], ln_c_weight, ln_c_bias, eps)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h, c


class JitVariant(nn.Module):
    """One layer of fastrnn.PeepholeLSTM or fastrnn.LayerNormLSTM (``ref``) as a TorchScript
    loop on ``ref``'s own parameter tensors: the input projection of all steps is one GEMM
    (for LayerNormLSTM with LN_ih over all steps at once), the step loop is scripted, and
    autograd differentiates it. Returns ``(output, (h_n, c_n))`` as the module does."""

    def __init__(self, cell: str, ref: nn.Module):
        super().__init__()
        if cell not in VARIANTS:
            raise ValueError(f"JitVariant runs {VARIANTS}, not {cell!r}")
        if ref.num_layers != 1 or ref.bidirectional:
            raise ValueError("JitVariant runs one unidirectional layer")
        self.cell, self.ref = cell, ref

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        r = self.ref
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError("JitVariant takes a padded 3-D input (no PackedSequence, no unbatched input)")
        if r.batch_first:
            x = x.transpose(0, 1)
        T, B, _ = x.shape
        H = r.hidden_size
        P = getattr(r, "proj_size", 0) or H
        h0, c0 = (x.new_zeros(B, P), x.new_zeros(B, H)) if hx is None else (hx[0][0], hx[1][0])
        x2 = x.reshape(T * B, -1)
        if self.cell == "peephole_lstm":
            w_ih_t = r.weight_ih_l0.t()
            bias = getattr(r, "bias_ih_l0", None)
            if bias is None:
                x_proj = x2.mm(w_ih_t)
            else:
                x_proj = torch.addmm(bias + r.bias_hh_l0, x2, w_ih_t)
            w_hr = getattr(r, "weight_hr_l0", None)
            y, h, c = _peephole_premul(
                x_proj.view(T, B, -1), h0, c0, r.weight_hh_l0.t(), r.weight_ch_l0, None if w_hr is None else w_hr.t()
            )
        else:
            G = 4 * H
            b_ih = getattr(r, "ln_ih_bias_l0", None)
            x_proj = F.layer_norm(x2.mm(r.weight_ih_l0.t()), [G], r.ln_ih_weight_l0, b_ih, r.eps)
            # bias=False: zero shifts, not None. The scripted loop's optimised backward with
            # None LayerNorm biases fails (torch 2.13: "size of tensor a (4H) must match ...
            # (H)" from the third differentiated call on); + 0 leaves every value unchanged.
            b_hh, b_c = getattr(r, "ln_hh_bias_l0", None), getattr(r, "ln_c_bias_l0", None)
            y, h, c = _layernorm_premul(
                x_proj.view(T, B, G),
                h0,
                c0,
                r.weight_hh_l0.t(),
                r.ln_hh_weight_l0,
                x.new_zeros(G) if b_hh is None else b_hh,
                r.ln_c_weight_l0,
                x.new_zeros(H) if b_c is None else b_c,
                float(r.eps),
            )
        return (y.transpose(0, 1) if r.batch_first else y), (h.unsqueeze(0), c.unsqueeze(0))


class PythonLoop(nn.Module):
    """A Python loop over the torch.nn cell carrying the layer's weights."""

    def __init__(self, cell: str, ref: nn.Module):
        super().__init__()
        self.cell = cell
        self.step = CELL[cell](ref.input_size, ref.hidden_size).to(ref.weight_ih_l0)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.step, name).copy_(getattr(ref, name + "_l0"))

    def forward(self, x):
        state = None
        outs = []
        for t in range(x.shape[0]):
            state = self.step(x[t], state)
            outs.append(state[0] if self.cell == "lstm" else state)
        return torch.stack(outs), None


# fastrnn[triton:<shape>] pins the Triton kernel shape (FASTRNN_TRITON_KERNEL) for the
# comparisons of the GPU goal suite; plain fastrnn[triton] lets the size rule choose. Not the
# sequence kernel: it holds all weight tiles on chip, which at the grid's sizes (H >= 256)
# is past its fit at every config, and a forced shape past its fit is refused (launch.plan).
TRITON_SHAPES = ("step", "persistent")


def providers(cell: str, device: torch.device, suite: str = "default", dry_run: bool = False) -> list[str]:
    """The providers a suite measures for ``cell``; Triton on CPU only in a dry run (the
    interpreter exercises the suite, it is not a speed to report)."""
    names = [
        f"fastrnn[{b}]"
        for b, s in fastrnn.available_backends().items()
        if s == "available"
        and b != "reference"
        and fastrnn.backends._REGISTRY[b].runs_on(device)
        and not (b == "triton" and device.type == "cpu" and not dry_run)
    ]
    if cell in VARIANTS:
        if suite == "gpu_goals":
            # the suite's LSTM rows (fastrnn and cuDNN, same grid, same run) are the reference
            return names
        # fastrnn.LSTM[b]: the plain LSTM on the same backend, the cost of the variant's terms
        return [*names, "jit_premul", *(f"fastrnn.LSTM{n[len('fastrnn') :]}" for n in names)]
    if suite == "gpu_goals":
        # the loop providers would take minutes per T=1024 config and are not the peer here
        pinned = [f"fastrnn[triton:{s}]" for s in TRITON_SHAPES] if "fastrnn[triton]" in names else []
        return names + pinned + ["torch.nn"]
    return [*names, "torch.nn", "jit_premul", "python_loop"]


def kernel_shape_of(provider: str):
    """The pinned Triton kernel shape of a provider name, or None."""
    if provider.startswith("fastrnn[triton:"):
        return provider[len("fastrnn[triton:") : -1]
    return None


def build(provider: str, cell: str, ref: nn.Module) -> nn.Module:
    if provider == "torch.nn":
        return ref
    if provider == "jit_premul":
        return JitVariant(cell, ref) if cell in VARIANTS else JitPremul(cell, ref)
    if provider == "python_loop":
        return PythonLoop(cell, ref)
    if provider.startswith("fastrnn.LSTM["):
        m = fastrnn.LSTM(ref.input_size, ref.hidden_size, backend=provider[len("fastrnn.LSTM[") : -1])
        m = m.to(ref.weight_ih_l0)
        # the weights of the variant that have the LSTM's shapes (W_ih, W_hh, and the biases of
        # PeepholeLSTM); the LSTM keeps its own initial values for the rest
        own = m.state_dict()
        shared = {k: v for k, v in ref.state_dict().items() if k in own and own[k].shape == v.shape}
        m.load_state_dict(shared, strict=False)
        return m
    backend = provider[len("fastrnn[") : -1].split(":")[0]
    m = FAST[cell](ref.input_size, ref.hidden_size, backend=backend).to(ref.weight_ih_l0)
    m.load_state_dict(ref.state_dict())
    return m
