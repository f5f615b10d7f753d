"""The registered ops: opcheck (schema, fake impl, autograd registration, AOT dispatch),
float64 gradcheck, and argument validation on direct calls."""

import pytest
import torch
from torch.library import opcheck

import fastrnn
from conftest import BACKEND, DEVICE
from fastrnn import backends

T, B, H, P = 5, 3, 4, 3


def _backend():
    return backends.resolve(BACKEND, DEVICE)


def _t(*shape, grad=True):
    return torch.randn(*shape, dtype=torch.float64, device=DEVICE, requires_grad=grad)


def _lengths():
    return torch.tensor([5, 2, 4], device=DEVICE)


VARIANTS = [
    pytest.param(None, False, id="full-fwd"),
    pytest.param(None, True, id="full-rev"),
    pytest.param("lengths", False, id="lengths-fwd"),
    pytest.param("lengths", True, id="lengths-rev"),
]


def lstm_args(lengths, reverse, proj):
    P_ = P if proj else H
    return (
        _t(T, B, 4 * H),
        _t(4 * H, P_),
        _t(P, H) if proj else None,
        _t(B, P_),
        _t(B, H),
        _lengths() if lengths else None,
        reverse,
        _backend(),
    )


def gru_args(lengths, reverse, b_hn=True):
    return (
        _t(T, B, 3 * H),
        _t(3 * H, H),
        _t(H) if b_hn else None,
        _t(B, H),
        _lengths() if lengths else None,
        reverse,
        _backend(),
    )


def rnn_args(lengths, reverse, nonlinearity):
    return (_t(T, B, H), _t(H, H), _t(B, H), _lengths() if lengths else None, reverse, nonlinearity, _backend())


def _cases(lengths, reverse):
    return [
        ("lstm", torch.ops.fastrnn.lstm_recurrence, lstm_args(lengths, reverse, False), 3),
        ("lstm_proj", torch.ops.fastrnn.lstm_recurrence, lstm_args(lengths, reverse, True), 3),
        ("gru", torch.ops.fastrnn.gru_recurrence, gru_args(lengths, reverse), 2),
        ("gru_nobias", torch.ops.fastrnn.gru_recurrence, gru_args(lengths, reverse, False), 2),
        ("rnn_tanh", torch.ops.fastrnn.rnn_recurrence, rnn_args(lengths, reverse, "tanh"), 2),
        ("rnn_relu", torch.ops.fastrnn.rnn_recurrence, rnn_args(lengths, reverse, "relu"), 2),
    ]


@pytest.mark.parametrize("lengths,reverse", VARIANTS)
def test_opcheck_forward_ops(lengths, reverse):
    for _name, op, args, _ in _cases(lengths, reverse):
        opcheck(op, args)


@pytest.mark.parametrize("lengths,reverse", VARIANTS)
def test_opcheck_backward_ops(lengths, reverse):
    for name, op, args, n_out in _cases(lengths, reverse):
        outs = op(*args)
        grads = [torch.randn_like(o) for o in outs[:n_out]]
        bwd = getattr(torch.ops.fastrnn, name.split("_")[0] + "_recurrence_backward")
        if name.startswith("lstm"):
            x, w_hh, w_hr, h0, c0, ln, rev, be = args
            y, _, _, gates, cs = outs
            bargs = (*grads, w_hh, w_hr, h0, c0, y, gates, cs, ln, rev, be)
        elif name.startswith("gru"):
            x, w_hh, b_hn, h0, ln, rev, be = args
            y, _, gates = outs
            bargs = (*grads, w_hh, b_hn, h0, y, gates, ln, rev, be)
        else:
            x, w_hh, h0, ln, rev, nl, be = args
            bargs = (*grads, w_hh, h0, outs[0], ln, rev, nl, be)
        opcheck(bwd, tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in bargs))


@pytest.mark.parametrize("lengths,reverse", VARIANTS)
def test_gradcheck_float64(lengths, reverse):
    for name, op, args, n_out in _cases(lengths, reverse):
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

        def f(*ts, op=op, args=args, tensors=tensors, n_out=n_out):
            full = list(args)
            for i, t in zip(tensors, ts):
                full[i] = t
            return op(*full)[:n_out]

        assert torch.autograd.gradcheck(f, [args[i] for i in tensors]), name


BAD_CALLS = [
    (
        "x_rank",
        lambda be: torch.ops.fastrnn.gru_recurrence(
            torch.randn(3, 6), torch.randn(6, 2), None, torch.randn(3, 2), None, False, be
        ),
        "x_proj must be 3-D",
    ),
    (
        "w_hh_shape",
        lambda be: torch.ops.fastrnn.lstm_recurrence(
            torch.randn(2, 3, 8), torch.randn(8, 3), None, torch.randn(3, 2), torch.randn(3, 2), None, False, be
        ),
        "w_hh must have shape",
    ),
    (
        "h0_shape",
        lambda be: torch.ops.fastrnn.rnn_recurrence(
            torch.randn(2, 3, 4), torch.randn(4, 4), torch.randn(2, 4), None, False, "tanh", be
        ),
        "h0 must have shape",
    ),
    (
        "dtype",
        lambda be: torch.ops.fastrnn.rnn_recurrence(
            torch.randn(2, 3, 4), torch.randn(4, 4).double(), torch.randn(3, 4), None, False, "tanh", be
        ),
        "w_hh has dtype torch.float64",
    ),
    (
        "lengths_dtype",
        lambda be: torch.ops.fastrnn.rnn_recurrence(
            torch.randn(2, 3, 4), torch.randn(4, 4), torch.randn(3, 4), torch.tensor([1.0, 2.0, 2.0]), False, "tanh", be
        ),
        "lengths must be an int64 tensor",
    ),
    (
        "gates_multiple",
        lambda be: torch.ops.fastrnn.gru_recurrence(
            torch.randn(2, 3, 7), torch.randn(6, 2), None, torch.randn(3, 2), None, False, be
        ),
        "not a multiple of 3",
    ),
    (
        "empty",
        lambda be: torch.ops.fastrnn.gru_recurrence(
            torch.randn(0, 3, 6), torch.randn(6, 2), None, torch.randn(3, 2), None, False, be
        ),
        "Expected sequence length to be larger than 0",
    ),
    (
        "nonlinearity",
        lambda be: torch.ops.fastrnn.rnn_recurrence(
            torch.randn(2, 3, 4), torch.randn(4, 4), torch.randn(3, 4), None, False, "gelu", be
        ),
        "Unknown nonlinearity 'gelu'",
    ),
]


@pytest.mark.parametrize("cid,call,msg", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_direct_op_calls_validate(cid, call, msg):
    with pytest.raises(RuntimeError, match=msg):
        call(backends.resolve(BACKEND, torch.device("cpu")))


def test_eager_route_and_dispatcher_route_agree_bitwise():
    """Plain eager calls skip the dispatcher (ops.lstm/gru/rnn); the registered ops are what
    compile and other tracers see. Both must give identical outputs and gradients."""
    from fastrnn import ops

    for (name, op, args, n_out), entry in zip(
        _cases("lengths", True), [ops.lstm, ops.lstm, ops.gru, ops.gru, ops.rnn, ops.rnn]
    ):
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        a = entry(*args)[:n_out]
        assert type(a[0].grad_fn).__name__.endswith("RecurrenceBackward"), name  # the eager route ran
        ups = [torch.randn_like(t) for t in a]
        ga = torch.autograd.grad(a, leaves, ups)
        b = op(*args)[:n_out]
        gb = torch.autograd.grad(b, leaves, ups)
        assert all(torch.equal(x, y) for x, y in zip(a, b)), name
        assert all(torch.equal(x, y) for x, y in zip(ga, gb)), name


def test_modules_take_the_eager_route():

    m = fastrnn.GRU(3, 4)
    out, _ = m(torch.randn(2, 1, 3))
    seen, stack = set(), [out.grad_fn]
    while stack:
        f = stack.pop()
        if f is not None and f not in seen:
            seen.add(f)
            stack.extend(g for g, _ in f.next_functions)
    assert any(type(f).__name__ == "GRURecurrenceBackward" for f in seen)


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("used", ["output", "h_n", "c_n"])
def test_gradient_through_some_outputs_only(family, used):
    """A loss on only some outputs (the others get no gradient, which the eager route does
    not materialise as zeros) gives torch.nn's gradients."""
    if used == "c_n" and family != "lstm":
        pytest.skip("only the LSTM has a cell state")
    from helpers import make_pair

    ours, theirs = make_pair(family, 3, 5, torch.float64, num_layers=2)
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=DEVICE)
    for m in (ours, theirs):
        out, hx = m(x)
        pick = {"output": out, "h_n": hx[0] if family == "lstm" else hx, "c_n": hx[1] if family == "lstm" else None}
        pick[used].pow(2).sum().backward()
    from fastrnn import testing

    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert testing.rel_rms(p.grad, q.grad) <= testing.bound(torch.float64), name
