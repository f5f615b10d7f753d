"""The C++ backend's one-call paths: a whole stack's inference (csrc/stack.cpp) and a cell
step (csrc/cell_step.cpp). The stack path must give the same bits as the route a backward
can follow (same operations, no workspace); a cell step is checked against torch.nn and
the reference at the numerics bounds, gradients included, and its C++ entries refuse bad
arguments instead of reading out of bounds."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import testing

cpp = pytest.mark.skipif(fastrnn.available_backends()["cpp"] != "available", reason="the C++ extension is not built")

STACKS = [
    ("lstm", fastrnn.LSTM, {}),
    ("lstm_deep_bidir_dropout", fastrnn.LSTM, {"num_layers": 3, "bidirectional": True, "dropout": 0.3}),
    ("lstm_nobias", fastrnn.LSTM, {"bias": False, "num_layers": 2}),
    ("lstm_proj_bidir", fastrnn.LSTM, {"proj_size": 3, "num_layers": 2, "bidirectional": True}),
    ("gru", fastrnn.GRU, {"num_layers": 2, "bidirectional": True, "dropout": 0.5}),
    ("gru_nobias", fastrnn.GRU, {"bias": False}),
    ("rnn_tanh", fastrnn.RNN, {"num_layers": 2}),
    ("rnn_relu_bidir", fastrnn.RNN, {"nonlinearity": "relu", "bidirectional": True}),
]


def _flat(out, packed):
    y, hidden = out
    return [y.data if packed else y, *(hidden if isinstance(hidden, tuple) else (hidden,))]


@cpp
@pytest.mark.parametrize("cid,cls,kw", STACKS, ids=[s[0] for s in STACKS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_stack_inference_same_bits_as_training_route(cid, cls, kw, dtype, packed):
    m = cls(5, 7, backend="cpp", dtype=dtype, **kw).train()  # dropout active: masks must match too
    x = torch.randn(6, 4, 5, dtype=dtype)
    inp = pack_padded_sequence(x, torch.tensor([6, 2, 5, 3]), enforce_sorted=False) if packed else x
    torch.manual_seed(5)
    ref = _flat(m(inp), packed)  # parameters require grad: the op route, workspaces kept
    torch.manual_seed(5)
    with torch.no_grad():
        out = _flat(m(inp), packed)
    for a, b in zip(ref, out, strict=True):
        assert torch.equal(a.detach(), b)


CHUNKED = [
    ("lstm_bidir", fastrnn.LSTM, {"num_layers": 2, "bidirectional": True}),
    ("lstm_proj", fastrnn.LSTM, {"proj_size": 16}),
    ("gru_bidir", fastrnn.GRU, {"bidirectional": True}),
    ("rnn", fastrnn.RNN, {}),
]


@cpp
@pytest.mark.parametrize("cid,cls,kw", CHUNKED, ids=[s[0] for s in CHUNKED])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_stack_inference_in_chunks(cid, cls, kw, packed):
    """A projection past 2^20 elements is computed a chunk of steps at a time, the states
    carried across chunks in each direction's order (lengths counted from each chunk).
    Each chunk's GEMM has fewer rows than the op route's one GEMM: BLAS may round those rows
    differently on other CPUs, so this compares at the bound (on this project's CPUs they
    were the same bits)."""
    m = cls(24, 64, backend="cpp", **kw)
    T, B = 300, 16  # 300*16*4*64*2 elements: chunks of 32 steps for the bidirectional LSTM
    x = torch.randn(T, B, 24)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
    ref = _flat(m(inp), packed)
    with torch.no_grad():
        out = _flat(m(inp), packed)
    for a, b in zip(ref, out, strict=True):
        assert testing.rel_rms(b, a.detach()) <= testing.bound(torch.float32)


@cpp
def test_stack_inference_refuses_bad_arguments():
    w = [torch.randn(8, 3), torch.randn(8, 2)]
    h0, c0 = torch.zeros(1, 4, 2), torch.zeros(1, 4, 2)
    x = torch.randn(5, 4, 3)
    stack = fastrnn._cpp._C.stack_forward
    with pytest.raises(RuntimeError, match="weight_ih"):
        stack("LSTM", x, [h0, c0], [torch.randn(8, 4), w[1]], 1, False, False, 0, 0.0, None)
    with pytest.raises(RuntimeError, match="expected 2 weights"):
        stack("LSTM", x, [h0, c0], w[:1], 1, False, False, 0, 0.0, None)
    with pytest.raises(RuntimeError, match="c0"):
        stack("LSTM", x, [h0, torch.zeros(1, 3, 2)], w, 1, False, False, 0, 0.0, None)
    with pytest.raises(RuntimeError, match="lengths"):
        stack("LSTM", x, [h0, c0], w, 1, False, False, 0, 0.0, torch.tensor([5, 6, 1, 1]))
    with pytest.raises(RuntimeError, match="runs LSTM"):
        stack("PEEPHOLE_LSTM", x, [h0, c0], w, 1, False, False, 0, 0.0, None)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        stack("LSTM", x.half(), [h0, c0], w, 1, False, False, 0, 0.0, None)


CELLS = [
    ("lstm", fastrnn.LSTMCell, torch.nn.LSTMCell, {}),
    ("lstm_nobias", fastrnn.LSTMCell, torch.nn.LSTMCell, {"bias": False}),
    ("gru", fastrnn.GRUCell, torch.nn.GRUCell, {}),
    ("gru_nobias", fastrnn.GRUCell, torch.nn.GRUCell, {"bias": False}),
    ("rnn_tanh", fastrnn.RNNCell, torch.nn.RNNCell, {}),
    ("rnn_relu", fastrnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
]


def _cell_grads(cell, x, hx, weights_of, upstream):
    """Outputs and the gradients of x, the states and every parameter, for a loss that
    weights each output with ``upstream`` (None: that output is not used)."""
    out = cell(x, hx)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o * u).sum() for o, u in zip(outs, upstream, strict=True) if u is not None)
    states = hx if isinstance(hx, tuple) else (hx,)
    wrt = [x, *states, *weights_of(cell)]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return [o.detach() for o in outs], grads


@cpp
@pytest.mark.parametrize("cid,ours_cls,nn_cls,kw", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# the last size is past use_blas: its products go through torch's BLAS
@pytest.mark.parametrize("B,I,H", [(1, 5, 7), (3, 16, 20), (9, 33, 70), (40, 200, 200)])
def test_cell_step_against_torch_nn_and_reference(cid, ours_cls, nn_cls, kw, dtype, B, I, H):
    ours = ours_cls(I, H, backend="cpp", dtype=dtype, **kw)
    ref = ours_cls(I, H, backend="reference", dtype=dtype, **kw)
    theirs = nn_cls(I, H, dtype=dtype, **kw)
    ref.load_state_dict(ours.state_dict())
    theirs.load_state_dict(ours.state_dict())
    lstm = ours_cls is fastrnn.LSTMCell
    x = torch.randn(B, I, dtype=dtype, requires_grad=True)
    hx = tuple(torch.randn(B, H, dtype=dtype, requires_grad=True) for _ in range(2 if lstm else 1))
    hx = hx if lstm else hx[0]
    # each output alone and both: an unused output's gradient reaches the step as None
    upstreams = [(torch.randn(B, H, dtype=dtype), torch.randn(B, H, dtype=dtype))] if lstm else [(None,)]
    if lstm:
        upstreams += [(upstreams[0][0], None), (None, upstreams[0][1])]
    else:
        upstreams = [(torch.randn(B, H, dtype=dtype),)]
    for up in upstreams:
        got = _cell_grads(ours, x, hx, lambda m: list(m.parameters()), up)
        for other in (theirs, ref):
            want = _cell_grads(other, x, hx, lambda m: list(m.parameters()), up)
            for a, b in zip(got[0] + list(got[1]), want[0] + list(want[1]), strict=True):
                assert testing.rel_rms(a, b) <= testing.bound(dtype)


@cpp
@pytest.mark.parametrize("cid,ours_cls,nn_cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_cell_step_double_backward(cid, ours_cls, nn_cls, kw):
    cell = ours_cls(4, 5, backend="cpp", dtype=torch.float64, **kw)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def first(x):
        out = cell(x)
        return out[0] * out[1] if isinstance(out, tuple) else out

    assert torch.autograd.gradgradcheck(first, (x,))


@cpp
@pytest.mark.parametrize("cid,ours_cls,nn_cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_cell_step_no_grad_equals_grad_route(cid, ours_cls, nn_cls, kw):
    cell = ours_cls(6, 9, backend="cpp", **kw)
    x = torch.randn(4, 6)
    a = cell(x)
    with torch.no_grad():
        b = cell(x)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True):
        assert torch.equal(u.detach(), v)


@cpp
def test_cell_step_entries_refuse_bad_arguments():
    C = fastrnn._cpp._C
    x, h, c = torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 5)
    w_ih, w_hh, b = torch.randn(20, 4), torch.randn(20, 5), torch.randn(20)
    with pytest.raises(RuntimeError, match="weight_hh"):
        C.lstm_cell_forward(x, h, c, w_ih, torch.randn(20, 4), b, b, True)
    with pytest.raises(RuntimeError, match="cx"):
        C.lstm_cell_forward(x, h, torch.randn(2, 5), w_ih, w_hh, b, b, True)
    with pytest.raises(RuntimeError, match="bias_ih"):
        C.lstm_cell_forward(x, h, c, w_ih, w_hh, torch.randn(19), b, True)
    with pytest.raises(RuntimeError, match="go together"):
        C.lstm_cell_forward(x, h, c, w_ih, w_hh, b, None, True)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        C.gru_cell_forward(x.int(), h, w_ih[:15], w_hh[:15], None, None, True)
    with pytest.raises(RuntimeError, match="gates"):
        C.lstm_cell_backward(h, c, x, h, c, w_ih, w_hh, torch.randn(3, 19), c, [True] * 6)
    with pytest.raises(RuntimeError, match="6 flags"):
        C.rnn_cell_backward(h, x, h, w_ih[:5], w_hh[:5], h, "tanh", [True])
    with pytest.raises(RuntimeError, match="nonlinearity"):
        C.rnn_cell_forward(x, h, w_ih[:5], w_hh[:5], None, None, "gelu")
