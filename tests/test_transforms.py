"""PyTorch's function transforms and AD modes on fastrnn modules, against torch.nn in float64.

Forward-mode AD (torch.func.jvp / jacfwd, torch.autograd.forward_ad), the reverse-mode
torch.func transforms (grad, vjp, jacrev, hessian, vmap) and batched gradients
(``is_grads_batched``, gradcheck's batched-grad check) must give torch.nn's numbers on every
backend, never zeros or an error.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call

import fastrnn
from conftest import BACKEND, DEVICE
from fastrnn import testing
from helpers import CELLS, make_pair

T, B, I, H = 4, 2, 3, 5
# float64 where the backend has it (exact comparison); the Triton kernels are float32 at most
F64 = torch.float32 if BACKEND == "triton" else torch.float64
BOUND = testing.bound(F64)
# Forward-mode AD always runs the backend-independent reference composite (checked in float64
# on the reference and cpp lanes); in float32 torch.nn's oneDNN LSTM has no forward AD to
# compare with.
FORWARD_AD = pytest.mark.skipif(torch.float64 != F64, reason="forward AD is compared in float64 only")

LAYERS = [
    pytest.param(family, {**kw, "num_layers": 2, "bidirectional": True}, id=f"{cid}-L2-bi") for cid, family, kw in CELLS
] + [pytest.param("lstm", {"batch_first": True}, id="lstm-bf")]

CELL_TWINS = [
    pytest.param(fastrnn.LSTMCell, nn.LSTMCell, id="lstmcell"),
    pytest.param(fastrnn.GRUCell, nn.GRUCell, id="grucell"),
    pytest.param(fastrnn.RNNCell, nn.RNNCell, id="rnncell"),
]


def _out(module):
    """x -> the output tensor of a layer (first element) or a cell (h, or h of (h, c))."""

    def f(x):
        out = module(x)
        return out[0] if isinstance(out, tuple) else out

    return f


def _cell_pair(ours_cls, nn_cls):
    ours = ours_cls(I, H).to(device=DEVICE, dtype=F64)
    theirs = nn_cls(I, H).to(device=DEVICE, dtype=F64)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _assert_close(a, b):
    assert testing.rel_rms(a, b) <= BOUND, f"rel-RMS {testing.rel_rms(a, b):.3e}"


def _x(shape=(T, B, I)):
    return torch.randn(*shape, dtype=F64, device=DEVICE)


@FORWARD_AD
@pytest.mark.parametrize("family,kw", LAYERS)
def test_jvp_layers(family, kw):
    ours, theirs = make_pair(family, I, H, F64, **kw)
    x, v = _x(), _x()
    _, t_ours = torch.func.jvp(_out(ours), (x,), (v,))
    _, t_theirs = torch.func.jvp(_out(theirs), (x,), (v,))
    assert t_theirs.abs().max() > 0
    _assert_close(t_ours, t_theirs)


@FORWARD_AD
@pytest.mark.parametrize("family,kw", LAYERS[:3])
def test_jvp_wrt_parameters(family, kw):
    """Tangents of the weights (functional_call), e.g. for natural-gradient methods."""
    ours, theirs = make_pair(family, I, H, F64, **kw)
    x = _x()
    params = {k: v.detach() for k, v in ours.named_parameters()}
    tangents = {k: torch.randn_like(v) for k, v in params.items()}

    def run(m):
        return torch.func.jvp(lambda p: functional_call(m, p, (x,))[0], (params,), (tangents,))[1]

    _assert_close(run(ours), run(theirs))


@FORWARD_AD
@pytest.mark.parametrize("ours_cls,nn_cls", CELL_TWINS)
def test_jvp_and_jacfwd_cells(ours_cls, nn_cls):
    ours, theirs = _cell_pair(ours_cls, nn_cls)
    x, v = _x((B, I)), _x((B, I))
    _assert_close(torch.func.jvp(_out(ours), (x,), (v,))[1], torch.func.jvp(_out(theirs), (x,), (v,))[1])
    _assert_close(torch.func.jacfwd(_out(ours))(x), torch.func.jacfwd(_out(theirs))(x))


@FORWARD_AD
@pytest.mark.parametrize("family,kw", LAYERS[:3])
def test_forward_ad_dual_tensors(family, kw):
    ours, theirs = make_pair(family, I, H, F64, **kw)
    x, v = _x(), _x()
    tangents = []
    for m in (ours, theirs):
        with fwAD.dual_level():
            y = m(fwAD.make_dual(x, v))[0]
            tangents.append(fwAD.unpack_dual(y).tangent)
    assert tangents[0] is not None
    _assert_close(*tangents)


@pytest.mark.parametrize("family,kw", LAYERS)
def test_func_grad_vjp_jacrev(family, kw):
    ours, theirs = make_pair(family, I, H, F64, **kw)
    x = _x()

    def loss(m):
        return lambda t: _out(m)(t).pow(2).sum()

    _assert_close(torch.func.grad(loss(ours))(x), torch.func.grad(loss(theirs))(x))
    g = torch.randn_like(_out(theirs)(x))
    _assert_close(torch.func.vjp(_out(ours), x)[1](g)[0], torch.func.vjp(_out(theirs), x)[1](g)[0])
    xs = _x((2, 1, I))
    _assert_close(torch.func.jacrev(_out(ours))(xs), torch.func.jacrev(_out(theirs))(xs))


@FORWARD_AD
@pytest.mark.parametrize("ours_cls,nn_cls", CELL_TWINS)
def test_func_hessian_cells(ours_cls, nn_cls):
    ours, theirs = _cell_pair(ours_cls, nn_cls)
    x = _x((1, I))

    def loss(m):
        return lambda t: _out(m)(t).sin().sum()

    _assert_close(torch.func.hessian(loss(ours))(x), torch.func.hessian(loss(theirs))(x))


@FORWARD_AD
@pytest.mark.parametrize("family,kw", LAYERS[:3])
def test_func_hessian_layers(family, kw):
    ours, theirs = make_pair(family, I, H, F64, **kw)
    x = _x((3, 1, I))

    def loss(m):
        return lambda t: _out(m)(t).sin().sum()

    _assert_close(torch.func.hessian(loss(ours))(x), torch.func.hessian(loss(theirs))(x))


@pytest.mark.parametrize("family,kw", LAYERS)
def test_vmap(family, kw):
    ours, theirs = make_pair(family, I, H, F64, **kw)
    xs = _x((3, T, B, I))
    # torch.nn's RNNs have no batching rule: compare with a loop over the mapped dimension
    _assert_close(torch.vmap(_out(ours))(xs), torch.stack([_out(theirs)(x) for x in xs]))


@pytest.mark.parametrize("family,kw", LAYERS)
def test_batched_grads(family, kw):
    """autograd.grad(is_grads_batched=True): one backward per row of the upstream gradient."""
    ours, theirs = make_pair(family, I, H, F64, **kw)
    x = _x()
    grads = []
    for m in (ours, theirs):
        xx = x.clone().requires_grad_()
        y = m(xx)[0]
        torch.manual_seed(3)
        gy = torch.randn(7, *y.shape, dtype=F64, device=DEVICE)
        wrt = [xx, *m.parameters()]
        grads.append(torch.autograd.grad(y, wrt, gy, is_grads_batched=True))
    for a, b in zip(*grads):
        _assert_close(a, b)


@pytest.mark.parametrize("ours_cls,nn_cls", CELL_TWINS)
def test_batched_grads_cells(ours_cls, nn_cls):
    ours, theirs = _cell_pair(ours_cls, nn_cls)
    x = _x((B, I))
    grads = []
    for m in (ours, theirs):
        xx = x.clone().requires_grad_()
        y = _out(m)(xx)
        torch.manual_seed(3)
        grads.append(
            torch.autograd.grad(
                y, [xx, *m.parameters()], torch.randn(4, *y.shape, dtype=F64, device=DEVICE), is_grads_batched=True
            )
        )
    for a, b in zip(*grads):
        _assert_close(a, b)


@pytest.mark.skipif(torch.float64 != F64, reason="gradcheck needs float64, which the Triton kernels lack")
@pytest.mark.parametrize("family,kw", LAYERS[:3])
def test_gradcheck_batched(family, kw):
    ours, _ = make_pair(family, I, H, F64, **kw)
    x = _x((3, 2, I)).requires_grad_()
    assert torch.autograd.gradcheck(_out(ours), (x,), check_batched_grad=True, check_forward_ad=True)
