"""What the benchmark compares: each provider builds a callable layer from one shared
torch.nn module (same weights), so every provider computes the same function.

* ``fastrnn[<backend>]`` for each fastrnn backend that runs on the device
* ``torch.nn``: cuDNN on GPU, oneDNN / native ATen on CPU
* ``jit_premul``: TorchScript loop with the input projection hoisted out of the loop (the
  strongest variant of PyTorch's benchmarks/fastrnns)
* ``python_loop``: a Python loop over the torch.nn cell, what users write for variants today
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import fastrnn

NN = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
CELL = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}
FAST = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}


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
# comparisons of the GPU goal suite; plain fastrnn[triton] lets the size rule choose.
TRITON_SHAPES = ("sequence", "step", "persistent")


def providers(cell: str, device: torch.device, suite: str = "default") -> list[str]:
    names = [
        f"fastrnn[{b}]"
        for b, s in fastrnn.available_backends().items()
        if s == "available"
        and b != "reference"
        and fastrnn.backends._REGISTRY[b].runs_on(device)
        and not (b == "triton" and device.type == "cpu")
    ]
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
        return JitPremul(cell, ref)
    if provider == "python_loop":
        return PythonLoop(cell, ref)
    backend = provider[len("fastrnn[") : -1].split(":")[0]
    m = FAST[cell](ref.input_size, ref.hidden_size, backend=backend).to(ref.weight_ih_l0)
    m.load_state_dict(ref.state_dict())
    return m
