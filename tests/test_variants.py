"""PeepholeLSTM and LayerNormLSTM (fastrnn.variants) on the backend under test, against an
oracle written here from the equations in plain PyTorch (autograd; it shares nothing with
fastrnn.cells' steps): outputs, final states and every gradient, at the numerics table's
bounds. Then what every fastrnn layer does: cells, torch.compile without graph breaks,
determinism, backward in eval mode, double backward, torch.func, DDP, parity tools."""

import copy
import os
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fastrnn
from conftest import BACKEND, DEVICE
from fastrnn import testing

NO_FP64 = BACKEND == "triton"
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1" and BACKEND == "triton"


# ----------------------------------------------------------------------------------------
# The oracle: the equations, one step at a time, in plain PyTorch
# ----------------------------------------------------------------------------------------
def _peephole_step(m, sfx, x_t, h, c):
    w_ih, w_hh = getattr(m, f"weight_ih{sfx}"), getattr(m, f"weight_hh{sfx}")
    gates = x_t @ w_ih.t() + h @ w_hh.t()
    if m.bias:
        gates = gates + getattr(m, f"bias_ih{sfx}") + getattr(m, f"bias_hh{sfx}")
    H = m.hidden_size
    p = getattr(m, f"weight_ch{sfx}")
    p_i, p_f, p_o = p[:H], p[H : 2 * H], p[2 * H :]
    a_i, a_f, a_g, a_o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    i = torch.sigmoid(a_i + p_i * c)
    f = torch.sigmoid(a_f + p_f * c)
    g = torch.tanh(a_g)
    c_new = f * c + i * g
    o = torch.sigmoid(a_o + p_o * c_new)
    h_new = o * torch.tanh(c_new)
    if getattr(m, "proj_size", 0) > 0:
        h_new = h_new @ getattr(m, f"weight_hr{sfx}").t()
    return h_new, c_new


def _layernorm_step(m, sfx, x_t, h, c):
    H, eps = m.hidden_size, m.eps

    def ln(v, name):
        b = getattr(m, f"ln_{name}_bias{sfx}") if m.bias else None
        return F.layer_norm(v, (v.shape[-1],), getattr(m, f"ln_{name}_weight{sfx}"), b, eps)

    gates = ln(x_t @ getattr(m, f"weight_ih{sfx}").t(), "ih") + ln(h @ getattr(m, f"weight_hh{sfx}").t(), "hh")
    i, f, g, o = gates.split(H, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = ln(f * c + i * g, "c")
    return o * torch.tanh(c_new), c_new


class _Oracle(nn.Module):
    """Forward of a variant layer from the equations (same parameters, same input conventions)."""

    def __init__(self, module):
        super().__init__()
        self.m = module
        object.__setattr__(self, "_orig_mod", module)  # fastrnn.testing names the outputs after it
        self.step = (
            _peephole_step if isinstance(module, (fastrnn.PeepholeLSTM, fastrnn.PeepholeLSTMCell)) else _layernorm_step
        )

    def forward(self, input, hx=None):
        m = self.m
        if isinstance(m, (fastrnn.PeepholeLSTMCell, fastrnn.LayerNormLSTMCell)):
            unbatched = input.dim() == 1
            x = input.unsqueeze(0) if unbatched else input
            if hx is None:
                z = x.new_zeros(x.shape[0], m.hidden_size)
                hx = (z, z)
            h, c = (s.unsqueeze(0) for s in hx) if unbatched else hx
            h, c = self.step(m, "", x, h, c)
            return (h[0], c[0]) if unbatched else (h, c)
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(input)  # original batch order
        else:
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if m.batch_first else input)
            lengths = torch.full((x.shape[1],), x.shape[0])
        T, B = x.shape[:2]
        D = 2 if m.bidirectional else 1
        P = m.proj_size if m.proj_size > 0 else m.hidden_size
        if hx is None:
            h0 = x.new_zeros(m.num_layers * D, B, P)
            c0 = x.new_zeros(m.num_layers * D, B, m.hidden_size)
        else:
            h0, c0 = hx
            if not packed and unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        hs, cs = [], []
        layer_in = x
        for layer in range(m.num_layers):
            outs = []
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                h, c = h0[layer * D + d], c0[layer * D + d]
                ys = [None] * T
                for t in range(T - 1, -1, -1) if d else range(T):
                    active = (t < lengths).unsqueeze(1).to(x.device)
                    hn, cn = self.step(m, sfx, layer_in[t], h, c)
                    h, c = torch.where(active, hn, h), torch.where(active, cn, c)
                    ys[t] = torch.where(active, hn, torch.zeros_like(hn))
                outs.append(torch.stack(ys))
                hs.append(h)
                cs.append(c)
            layer_in = torch.cat(outs, -1)
        out, h_n, c_n = layer_in, torch.stack(hs), torch.stack(cs)
        if packed:
            return pack_padded_sequence(out, lengths, enforce_sorted=False), (h_n, c_n)
        if unbatched:
            return out[:, 0], (h_n[:, 0], c_n[:, 0])
        return (out.transpose(0, 1) if m.batch_first else out), (h_n, c_n)


def oracle(module, dtype=torch.float64):
    """A copy of ``module`` in ``dtype`` whose forward is the equations above."""
    twin = type(module)(*_ctor_args(module), backend="reference").to(dtype=dtype, device=DEVICE)
    twin.load_state_dict({k: v.to(dtype) for k, v in module.state_dict().items()})
    return _Oracle(twin)


def _ctor_args(m):
    if isinstance(m, (fastrnn.PeepholeLSTMCell, fastrnn.LayerNormLSTMCell)):
        return (m.input_size, m.hidden_size, m.bias)
    args = [m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, 0.0, m.bidirectional]
    return (*args, m.proj_size) if isinstance(m, fastrnn.PeepholeLSTM) else tuple(args)


# ----------------------------------------------------------------------------------------
# Parity against the oracle
# ----------------------------------------------------------------------------------------
def _randomise(m, gen):
    """Random values in every parameter (LN gains near 1, peepholes and shifts of either
    sign), so that no term of the math hides behind its initial value."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            p.copy_((1 + 0.3 * r) if "_weight" in name and name.startswith("ln_") else 0.4 * r)


def _inputs(kind, m, T, B, dtype, gen):
    I, D = m.input_size, (2 if m.bidirectional else 1)
    P = m.proj_size if m.proj_size > 0 else m.hidden_size

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=DEVICE)

    if kind == "unbatched":
        return rnd(T, I), (rnd(m.num_layers * D, P), rnd(m.num_layers * D, m.hidden_size))
    x = rnd(*((B, T) if m.batch_first else (T, B)), I)
    hx = (rnd(m.num_layers * D, B, P), rnd(m.num_layers * D, B, m.hidden_size))
    if kind == "packed":
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        lengths[0] = T
        lengths = lengths[torch.randperm(B, generator=gen)]  # unsorted
        x = pack_padded_sequence(x, lengths, batch_first=m.batch_first, enforce_sorted=False)
    if kind == "no_state":
        return (x,)
    return x, hx


LAYERS = [
    ("peephole", fastrnn.PeepholeLSTM, {}),
    ("peephole_proj", fastrnn.PeepholeLSTM, {"proj_size": 3}),
    ("layernorm", fastrnn.LayerNormLSTM, {}),
    ("layernorm_nobias", fastrnn.LayerNormLSTM, {"bias": False}),
]
SHAPES = [  # (id, kind, T, B, H, extra kwargs)
    ("L2_bi_packed", "packed", 6, 4, 5, {"num_layers": 2, "bidirectional": True}),
    ("bf_padded", "padded", 5, 3, 7, {"batch_first": True}),
    ("unbatched", "unbatched", 5, 1, 6, {}),
    ("B1_no_state", "no_state", 4, 1, 37, {}),
]
DTYPES = [torch.float32] + ([] if NO_FP64 else [torch.float64])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sid,kind,T,B,H,skw", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("lid,cls,kw", LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_matches_equations(lid, cls, kw, sid, kind, T, B, H, skw, dtype):
    gen = torch.Generator().manual_seed(7)
    ours = cls(3, H, **kw, **skw).to(device=DEVICE, dtype=dtype)
    _randomise(ours, gen)
    report = testing.compare(ours, oracle(ours), *_inputs(kind, ours, T, B, dtype, gen), sync_weights=False)
    assert report.passed, f"\n{report}"
    grads = {r.name for r in report.rows}
    assert all(f"grad_{n}" in grads for n, _ in ours.named_parameters()) and "grad_input" in grads


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("lid,cls,kw", LAYERS[::2], ids=[c[0] for c in LAYERS[::2]])
def test_half_precision_against_fp32_oracle(lid, cls, kw, dtype):
    gen = torch.Generator().manual_seed(3)
    ours = cls(3, 6, num_layers=2, **kw).to(device=DEVICE, dtype=dtype)
    _randomise(ours, gen)
    report = testing.compare(
        ours, oracle(ours, torch.float32), *_inputs("packed", ours, 5, 3, dtype, gen), sync_weights=False
    )
    assert all(r.bound == testing.bound(dtype) for r in report.rows)
    assert report.passed, f"\n{report}"


CELL_CLASSES = [("peephole_cell", fastrnn.PeepholeLSTMCell), ("layernorm_cell", fastrnn.LayerNormLSTMCell)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cid,cls", CELL_CLASSES, ids=[c[0] for c in CELL_CLASSES])
def test_cell_matches_equations(cid, cls, bias, dtype):
    gen = torch.Generator().manual_seed(5)
    cell = cls(4, 6, bias=bias).to(device=DEVICE, dtype=dtype)
    _randomise(cell, gen)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64).to(dtype=dtype, device=DEVICE)
    hx = tuple(torch.randn(3, 6, generator=gen, dtype=torch.float64).to(dtype=dtype, device=DEVICE) for _ in range(2))
    for args in ((x, hx), (x,), (x[0], (hx[0][0], hx[1][0]))):
        report = testing.compare(cell, oracle(cell), *args, sync_weights=False)
        assert [r.name for r in report.rows[:2]] == ["h", "c"]
        assert report.passed, f"\n{report}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_peepholes_are_lstm(dtype):
    """With every peephole zero, PeepholeLSTM is nn.LSTM: bitwise fastrnn.LSTM on the same
    fused backend (the peephole terms add exact zeros), and torch.nn.LSTM within the
    numerics bound. (The reference backend runs torch's elementwise ops, whose vector and
    scalar paths may round differently for the LSTM's strided gate views.)"""
    torch.manual_seed(0)
    kw = {"num_layers": 2, "bidirectional": True, "proj_size": 3}
    pl = fastrnn.PeepholeLSTM(4, 6, **kw).to(device=DEVICE, dtype=dtype)
    with torch.no_grad():
        for name, p in pl.named_parameters():
            if name.startswith("weight_ch"):
                p.zero_()
    state = {k: v for k, v in pl.state_dict().items() if not k.startswith("weight_ch")}
    lstm = fastrnn.LSTM(4, 6, **kw).to(device=DEVICE, dtype=dtype)
    lstm.load_state_dict(state)
    x = torch.randn(5, 3, 4, dtype=dtype, device=DEVICE)
    lengths = torch.tensor([5, 2, 4])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)

    def run(m):
        xx = packed.data.detach().clone().requires_grad_()
        out, (h, c) = m(PackedSequence(xx, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices))
        g = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=g).to(t)).sum() for t in (out.data, h, c))
        grads = torch.autograd.grad(loss, [xx] + [p for n, p in m.named_parameters() if not n.startswith("weight_ch")])
        return [out.data, h, c, *grads]

    ours, ref = run(pl), run(lstm)
    for a, b in zip(ours, ref, strict=True):
        if BACKEND in ("cpp", "triton"):
            assert torch.equal(a, b)
        else:
            assert testing.rel_rms(a, b) <= testing.bound(dtype)
    nn_lstm = nn.LSTM(4, 6, **kw).to(device=DEVICE, dtype=dtype)
    nn_lstm.load_state_dict(state)
    for a, b in zip(ours, run(nn_lstm), strict=True):
        assert testing.rel_rms(a, b) <= testing.bound(dtype)


def test_peephole_gradient_is_the_cell_state_path():
    """The peephole gradient is nonzero and matches the oracle (a zero peephole gradient
    would pass the zero-peephole test above)."""
    gen = torch.Generator().manual_seed(9)
    dtype = torch.float32 if NO_FP64 else torch.float64
    m = fastrnn.PeepholeLSTM(3, 5, bidirectional=True).to(device=DEVICE, dtype=dtype)
    _randomise(m, gen)
    report = testing.compare(m, oracle(m), *_inputs("packed", m, 6, 3, dtype, gen), sync_weights=False)
    assert report.passed, f"\n{report}"
    x = torch.randn(6, 3, 3, dtype=dtype, device=DEVICE)
    m(x)[0].sum().backward()
    assert m.weight_ch_l0.grad.abs().sum() > 0 and m.weight_ch_l0_reverse.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------
# Construction, state_dict, errors
# ----------------------------------------------------------------------------------------
def test_parameters_names_shapes_and_init():
    m = fastrnn.PeepholeLSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2)
    ref = nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2)
    names = [n for n, _ in m.named_parameters()]
    assert [n for n in names if not n.startswith("weight_ch")] == [n for n, _ in ref.named_parameters()]
    assert m.weight_ch_l1_reverse.shape == (18,) and isinstance(m, nn.Module) and not isinstance(m, nn.LSTM)
    for p in m.parameters():
        assert p.abs().max() <= 1 / 6**0.5 and p.std() > 0
    ln = fastrnn.LayerNormLSTM(3, 6, bidirectional=True)
    assert [n for n, _ in ln.named_parameters()][:8] == [
        "weight_ih_l0",
        "weight_hh_l0",
        "ln_ih_weight_l0",
        "ln_ih_bias_l0",
        "ln_hh_weight_l0",
        "ln_hh_bias_l0",
        "ln_c_weight_l0",
        "ln_c_bias_l0",
    ]
    assert torch.equal(ln.ln_c_weight_l0_reverse, torch.ones(6)) and torch.equal(ln.ln_hh_bias_l0, torch.zeros(24))
    assert [n for n, _ in fastrnn.LayerNormLSTM(3, 6, bias=False).named_parameters()] == [
        "weight_ih_l0",
        "weight_hh_l0",
        "ln_ih_weight_l0",
        "ln_hh_weight_l0",
        "ln_c_weight_l0",
    ]
    cell = fastrnn.LayerNormLSTMCell(3, 6, eps=1e-3)
    assert [n for n, _ in cell.named_parameters()][-2:] == ["ln_c_weight", "ln_c_bias"] and cell.eps == 1e-3
    # state_dict round trip; an nn.LSTM checkpoint loads into PeepholeLSTM except the peepholes
    m2 = fastrnn.PeepholeLSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2)
    m2.load_state_dict(m.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))
    missing = m2.load_state_dict(ref.state_dict(), strict=False).missing_keys
    assert sorted(missing) == sorted(n for n in names if n.startswith("weight_ch"))
    assert (
        "eps=0.001" in repr(cell) and repr(fastrnn.PeepholeLSTM(3, 6, proj_size=2)) == "PeepholeLSTM(3, 6, proj_size=2)"
    )


@pytest.mark.parametrize(
    "make,exc,msg",
    [
        (lambda: fastrnn.PeepholeLSTM(3, 4, proj_size=4), ValueError, "proj_size has to be smaller than hidden_size"),
        (lambda: fastrnn.PeepholeLSTM(3, 0), ValueError, "hidden_size must be greater than zero"),
        (lambda: fastrnn.LayerNormLSTM(3, 4, dropout=1.5), ValueError, "dropout should be a number in range"),
        (lambda: fastrnn.LayerNormLSTM(3, 4, eps=0.0), ValueError, "eps must be a positive"),
        (lambda: fastrnn.LayerNormLSTM(3, 4, proj_size=2), TypeError, "proj_size"),
        (lambda: fastrnn.PeepholeLSTMCell(3, 4, backend="cuda"), ValueError, "backend must be one of"),
        (lambda: fastrnn.LayerNormLSTM(3, 4, num_layers=0), ValueError, "num_layers must be greater than zero"),
    ],
)
def test_constructor_errors(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


@pytest.mark.parametrize("cls", [fastrnn.PeepholeLSTM, fastrnn.LayerNormLSTM])
def test_input_errors_as_nn_lstm(cls):
    ours, ref = cls(3, 4), nn.LSTM(3, 4)
    for args in [
        (torch.randn(5, 2, 2),),
        (torch.randn(5, 2, 3), (torch.randn(1, 3, 4), torch.randn(1, 2, 4))),
        (torch.randn(5, 2, 3), (torch.randn(1, 2, 4), torch.randn(1, 2, 5))),
        (torch.randn(5, 2, 3, 1),),
        (torch.randn(5, 2, 3).double(),),
    ]:
        with pytest.raises((RuntimeError, ValueError)) as theirs:
            ref(*args)
        with pytest.raises(theirs.type) as got:
            ours(*[a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args])
        assert str(got.value).replace(cls.__name__, "LSTM") == str(theirs.value)


# ----------------------------------------------------------------------------------------
# What every fastrnn layer does
# ----------------------------------------------------------------------------------------
MODELS = [
    pytest.param(lambda: fastrnn.PeepholeLSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3), id="peephole"),
    pytest.param(lambda: fastrnn.LayerNormLSTM(5, 8, num_layers=2, bidirectional=True), id="layernorm"),
]


@pytest.mark.parametrize("make", MODELS)
def test_compile_fullgraph_no_breaks_and_matches_eager(make):
    torch._dynamo.reset()
    model = make().to(DEVICE)
    x = torch.randn(6, 3, 5, device=DEVICE)
    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_count >= 1 and explain.graph_break_count == 0, explain.break_reasons
    report = testing.compare(torch.compile(model, fullgraph=True), model, x, sync_weights=False)
    assert report.passed, f"\n{report}"


@pytest.mark.parametrize("cls", [fastrnn.PeepholeLSTMCell, fastrnn.LayerNormLSTMCell])
def test_compile_cells(cls):
    torch._dynamo.reset()
    cell = cls(5, 8).to(DEVICE)
    x = torch.randn(3, 5, device=DEVICE)
    assert torch._dynamo.explain(cell)(x).graph_break_count == 0
    for a, b in zip(torch.compile(cell, fullgraph=True)(x), cell(x)):
        assert testing.rel_rms(a, b) <= testing.bound(torch.float32)


@pytest.mark.parametrize("make", MODELS)
def test_bitwise_deterministic_with_dropout(make):
    def run():
        torch.manual_seed(11)
        m = make().to(DEVICE)
        m.dropout = 0.3
        x = torch.randn(9, 4, 5, device=DEVICE, requires_grad=True)
        out, _ = m(x)
        out.backward(torch.randn_like(out))
        return [out.detach(), x.grad] + [p.grad for p in m.parameters()]

    a, b = run(), run()
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("make", MODELS)
def test_backward_in_eval_mode(make):
    m = make().to(DEVICE).eval()
    report = testing.compare(m, oracle(m, torch.float32), torch.randn(7, 2, 5, device=DEVICE), sync_weights=False)
    assert report.passed, f"\n{report}"


@pytest.mark.skipif(NO_FP64, reason="float64 is not a dtype of this backend")
@pytest.mark.parametrize(
    "cls,kw,names",
    [
        (fastrnn.PeepholeLSTM, {"proj_size": 2}, ["weight_hh_l0", "weight_ch_l0", "weight_hr_l0_reverse"]),
        (fastrnn.LayerNormLSTM, {}, ["weight_hh_l0", "ln_hh_weight_l0", "ln_c_bias_l0", "ln_ih_weight_l0_reverse"]),
    ],
    ids=["peephole", "layernorm"],
)
def test_gradcheck_and_gradgradcheck_float64(cls, kw, names):
    torch.manual_seed(0)
    m = cls(2, 3, bidirectional=True, **kw).double().to(DEVICE)
    _randomise(m, torch.Generator().manual_seed(2))
    x = torch.randn(3, 2, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    lengths = torch.tensor([3, 2])
    ws = [getattr(m, n).detach().clone().requires_grad_() for n in names]

    def f(x, *ws):
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, ws)), (pack_padded_sequence(x, lengths),))
        return out.data, h, c

    assert torch.autograd.gradcheck(f, (x, *ws))
    assert torch.autograd.gradgradcheck(f, (x, *ws))


@pytest.mark.parametrize("make", MODELS)
def test_double_backward_fp32_matches_reference_backend(make):
    torch.manual_seed(0)
    ours = make().to(DEVICE)
    ref = make().to(DEVICE)
    ref.backend = "reference"
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 5, device=DEVICE)

    def penalty(m):
        xx = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(m(xx)[0].sum(), xx, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), list(m.parameters()))

    for a, b in zip(penalty(ours), penalty(ref)):
        assert testing.rel_rms(a, b) <= testing.bound(torch.float32)


@pytest.mark.parametrize("make", MODELS)
def test_torch_func_grad_and_vmap(make):
    m = make().to(DEVICE)
    params = {k: v.detach() for k, v in m.named_parameters()}
    x = torch.randn(4, 3, 2, 5, device=DEVICE)

    def loss(p, xb):
        return torch.func.functional_call(m, p, (xb,))[0].pow(2).sum()

    g = torch.func.grad(loss)(params, x[0])
    m.zero_grad()
    loss(dict(m.named_parameters()), x[0]).backward()
    for k, p in m.named_parameters():
        assert testing.rel_rms(g[k], p.grad) <= testing.bound(torch.float32)
    batched = torch.func.vmap(lambda xb: torch.func.functional_call(m, params, (xb,))[0])(x)
    looped = torch.stack([m(xb)[0] for xb in x])
    assert testing.rel_rms(batched, looped.detach()) <= testing.bound(torch.float32)


def test_parity_tools_take_variants():
    m = fastrnn.LayerNormLSTM(3, 5, backend="reference")
    report = testing.compare(m, testing.oracle(m), torch.randn(4, 2, 3), sync_weights=False)
    assert report.passed and [r.name for r in report.rows[:3]] == ["output", "h_n", "c_n"]
    assert testing.main(["--cell", "peephole_lstm", "--hidden", "6", "--seq", "4", "--batch", "2"]) == 0


def _ddp_worker(rank, world, init_file, out_dir, backend_name):
    os.environ["FASTRNN_BACKEND"] = backend_name
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("rnn", fastrnn.LayerNormLSTM(3, 5, num_layers=2))
    ddp = nn.parallel.DistributedDataParallel(model)
    torch.manual_seed(100 + rank)
    out, _ = ddp(torch.randn(6, 2, 3))
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    del ddp, out
    dist.barrier()
    dist.destroy_process_group()
    torch.save(grads, os.path.join(out_dir, f"grads{rank}.pt"))


@pytest.mark.skipif(INTERPRETED, reason="two interpreted processes; the cpp and reference lanes run it")
def test_ddp_gloo_two_processes_averages_gradients():
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        ctx = mp.spawn(
            _ddp_worker,
            args=(world, init_file, tmp, os.environ.get("FASTRNN_BACKEND", "auto")),
            nprocs=world,
            join=False,
        )
        deadline = time.monotonic() + 180
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail("DDP workers did not finish within 180 s")
        got = [torch.load(os.path.join(tmp, f"grads{r}.pt")) for r in range(world)]
    torch.manual_seed(0)
    ref = fastrnn.LayerNormLSTM(3, 5, num_layers=2, backend="reference")
    local = []
    for rank in range(world):
        ref.zero_grad()
        torch.manual_seed(100 + rank)
        ref(torch.randn(6, 2, 3))[0].sum().backward()
        local.append([p.grad.clone() for p in ref.parameters()])
    for g0, g1, a, b in zip(got[0], got[1], *local):
        assert torch.equal(g0, g1)
        assert testing.rel_rms(g0, (a + b) / 2) <= testing.bound(torch.float32)


@pytest.mark.parametrize("make", MODELS)
def test_autocast_runs_in_the_autocast_dtype(make):
    """Under autocast a variant runs as an unpacked nn.LSTM layer does: in the autocast
    dtype, i.e. exactly as the same module cast to that dtype; parameter gradients float32."""
    m = make().to(DEVICE)
    low = copy.deepcopy(m).to(torch.bfloat16)
    x = torch.randn(6, 3, 5, device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        got = m(x)
    want = low(x.to(torch.bfloat16))
    for a, b in zip((got[0], *got[1]), (want[0], *want[1]), strict=True):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)
    got[0].float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in m.parameters())


@pytest.mark.parametrize("make", MODELS)
def test_forward_mode_ad_matches_the_equations(make):
    """torch.func.jvp (forward-mode AD, which the fused ops cannot see) runs the reference
    steps: the tangent equals the equations' own."""
    m = make().to(DEVICE)
    ref = oracle(m, torch.float32)
    x, v = torch.randn(5, 2, 5, device=DEVICE), torch.randn(5, 2, 5, device=DEVICE)
    out, tangent = torch.func.jvp(lambda t: m(t)[0], (x,), (v,))
    want_out, want_tangent = torch.func.jvp(lambda t: ref(t)[0], (x,), (v,))
    assert testing.rel_rms(out, want_out) <= testing.bound(torch.float32)
    assert testing.rel_rms(tangent, want_tangent) <= testing.bound(torch.float32)
