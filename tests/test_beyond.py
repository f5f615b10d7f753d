"""What torch.nn's recurrent layers do not do, on the backend under test:
torch.compile without graph breaks, bitwise determinism, backward in eval mode, double
backward, fastrnn.convert, DistributedDataParallel, very long sequences."""

import os
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from conftest import BACKEND, DEVICE
from fastrnn import testing
from helpers import CELLS, TWIN

# The triton backend has no float64 (fp32/fp16/bf16), and under TRITON_INTERPRET=1 each
# kernel step is interpreted in Python.
NO_FP64 = BACKEND == "triton"
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1" and BACKEND == "triton"

MODELS = [
    pytest.param(lambda: fastrnn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3), id="lstm_proj_bi"),
    pytest.param(lambda: fastrnn.GRU(5, 8, num_layers=2, bidirectional=True, batch_first=True), id="gru_bi_bf"),
    pytest.param(lambda: fastrnn.RNN(5, 8, nonlinearity="relu"), id="rnn_relu"),
]


# 1. torch.compile ---------------------------------------------------------------------
@pytest.mark.parametrize("make", MODELS)
def test_compile_fullgraph_no_breaks_and_matches_eager(make):
    torch._dynamo.reset()
    model = make().to(DEVICE)
    x = torch.randn(6, 3, 5, device=DEVICE)
    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_count >= 1 and explain.graph_break_count == 0, explain.break_reasons
    compiled = torch.compile(model, fullgraph=True)
    report = testing.compare(compiled, model, x, sync_weights=False)
    assert report.passed, f"\n{report}"


@pytest.mark.parametrize("cls", [fastrnn.LSTMCell, fastrnn.GRUCell, fastrnn.RNNCell])
def test_compile_cells(cls):
    torch._dynamo.reset()
    cell = cls(5, 8).to(DEVICE)
    x = torch.randn(3, 5, device=DEVICE)
    assert torch._dynamo.explain(cell)(x).graph_break_count == 0
    out, ref = torch.compile(cell, fullgraph=True)(x), cell(x)
    for a, b in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        assert testing.rel_rms(a, b) <= testing.bound(torch.float32)


def test_compile_packed_and_fake_shapes():
    """Fake impls give the right shapes for packed, bidirectional, projected LSTMs."""
    torch._dynamo.reset()
    model = fastrnn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3).to(DEVICE)
    x = torch.randn(6, 3, 5, device=DEVICE)
    packed = pack_padded_sequence(x, torch.tensor([6, 2, 4]), enforce_sorted=False)
    compiled = torch.compile(model)
    out, (h, c) = compiled(packed)
    ref, (h_ref, c_ref) = model(packed)
    assert out.data.shape == ref.data.shape and h.shape == (4, 3, 3) and c.shape == (4, 3, 8)
    assert testing.rel_rms(out.data, ref.data) <= testing.bound(torch.float32)


# 2. Determinism -----------------------------------------------------------------------
@pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
def test_bitwise_deterministic_with_dropout(cid, family, kw):
    def run():
        torch.manual_seed(11)
        m = TWIN[family][0](5, 8, num_layers=3, dropout=0.3, bidirectional=True, **kw).to(DEVICE)
        x = torch.randn(9, 4, 5, device=DEVICE, requires_grad=True)
        out, _ = m(x)
        out.backward(torch.randn_like(out))
        return [out.detach(), x.grad] + [p.grad for p in m.parameters()]

    a, b = run(), run()
    assert all(torch.equal(p, q) for p, q in zip(a, b))


# 3. Backward in eval mode -------------------------------------------------------------
@pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
def test_backward_in_eval_mode(cid, family, kw):
    m = TWIN[family][0](5, 8, num_layers=2, **kw).to(DEVICE)
    x = torch.randn(7, 2, 5, device=DEVICE)
    m.eval()
    ref = TWIN[family][1](5, 8, num_layers=2, **kw).to(DEVICE).eval()
    report = testing.compare(m, ref, x)  # saliency-style: gradients w.r.t. the input
    assert report.passed, f"\n{report}"
    assert report["grad_input"].rel_rms <= report["grad_input"].bound


# 4. Double backward -------------------------------------------------------------------
@pytest.mark.parametrize(
    "family,kw",
    [
        ("lstm", {}),
        ("lstm", {"proj_size": 2}),
        ("gru", {}),
        ("rnn", {"nonlinearity": "tanh"}),
        ("rnn", {"nonlinearity": "relu"}),
    ],
    ids=["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"],
)
@pytest.mark.skipif(NO_FP64, reason="float64 is not a dtype of this backend; see the fp32 test below")
def test_gradgradcheck_float64(family, kw):
    torch.manual_seed(0)
    m = TWIN[family][0](3, 4, bidirectional=True, **kw).double().to(DEVICE)
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    lengths = torch.tensor([4, 2])
    w = m.weight_hh_l0

    def f(x, w):
        out = torch.func.functional_call(m, {"weight_hh_l0": w}, (pack_padded_sequence(x, lengths),))
        return out[0].data

    assert torch.autograd.gradgradcheck(f, (x, w))


@pytest.mark.parametrize(
    "family,kw",
    [("lstm", {"proj_size": 2}), ("gru", {}), ("rnn", {"nonlinearity": "tanh"})],
    ids=["lstm_proj", "gru", "rnn_tanh"],
)
def test_double_backward_fp32_matches_reference_backend(family, kw):
    """Second-order gradients on the backend under test equal those of the reference
    backend (float32, any backend)."""
    torch.manual_seed(0)
    ours = TWIN[family][0](3, 4, bidirectional=True, **kw).to(DEVICE)
    ref = TWIN[family][0](3, 4, bidirectional=True, backend="reference", **kw).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3, device=DEVICE)

    def penalty(m):
        xx = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(m(xx)[0].sum(), xx, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), list(m.parameters()))

    for a, b in zip(penalty(ours), penalty(ref)):
        assert testing.rel_rms(a, b) <= testing.bound(torch.float32)


@pytest.mark.skipif(NO_FP64, reason="float64 is not a dtype of this backend; see the fp32 test above")
def test_gradient_penalty_matches_torch_nn():
    """A WGAN-GP style penalty: d/dθ ||d out / d x||^2, against torch.nn on CPU."""
    torch.manual_seed(0)
    ours = fastrnn.GRU(3, 4).double().to(DEVICE)
    ref = nn.GRU(3, 4).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)

    def penalty(m, x):
        x = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.pow(2).sum(), m.weight_hh_l0)
        return gw

    assert testing.rel_rms(penalty(ours, x.to(DEVICE)).cpu(), penalty(ref, x)) <= testing.bound(torch.float64)


# 6. DistributedDataParallel -----------------------------------------------------------
def _ddp_worker(rank, world, init_file, out_dir, backend_name):
    os.environ["FASTRNN_BACKEND"] = backend_name
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("rnn", fastrnn.LSTM(3, 5, num_layers=2))
    ddp = nn.parallel.DistributedDataParallel(model)
    torch.manual_seed(100 + rank)
    x = torch.randn(6, 2, 3)
    out, _ = ddp(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    # Release DDP (its reducer holds the process group) before tearing the group down:
    # destroyed later, at function exit, gloo's worker thread can wait on the GIL forever.
    del ddp, out
    dist.barrier()
    dist.destroy_process_group()
    torch.save(grads, os.path.join(out_dir, f"grads{rank}.pt"))


def test_ddp_gloo_two_processes_averages_gradients():
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        backend_name = os.environ.get("FASTRNN_BACKEND", "auto")
        ctx = mp.spawn(_ddp_worker, args=(world, init_file, tmp, backend_name), nprocs=world, join=False)
        deadline = time.monotonic() + 180
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail("DDP workers did not finish within 180 s")
        got = [torch.load(os.path.join(tmp, f"grads{r}.pt")) for r in range(world)]
    torch.manual_seed(0)
    ref = nn.LSTM(3, 5, num_layers=2)
    local = []
    for rank in range(world):
        ref.zero_grad()
        torch.manual_seed(100 + rank)
        ref(torch.randn(6, 2, 3))[0].sum().backward()
        local.append([p.grad.clone() for p in ref.parameters()])
    expected = [(a + b) / 2 for a, b in zip(*local)]
    for g0, g1, e in zip(got[0], got[1], expected):
        assert torch.equal(g0, g1)
        assert testing.rel_rms(g0, e) <= testing.bound(torch.float32)


# 7. Very long sequences ---------------------------------------------------------------
@pytest.mark.skipif(
    INTERPRETED,
    reason="100,000 interpreted steps take hours; the Triton GPU lane runs it "
    "(tests/test_triton.py), the cpp and reference lanes on CPU",
)
def test_sequence_of_100k_steps():
    """T = 100,000 (cuDNN fails from 65,536): forward and backward run and stay finite, and
    the saved workspace is exactly (T, B, 4H) + (T, B, H). (Long-T parity against the float64
    reference is checked at T = 20,000 in test_cpp.py.)"""
    T, B, H = 100_000, 1, 4
    torch.manual_seed(0)
    m = fastrnn.LSTM(2, H).to(DEVICE)
    x = torch.randn(T, B, 2, device=DEVICE)
    out, (h, c) = m(x)
    out.sum().backward()
    assert out.shape == (T, B, H) and torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    xp = torch.randn(T, B, 4 * H, device=DEVICE)
    res = torch.ops.fastrnn.lstm_recurrence(
        xp,
        m.weight_hh_l0.detach(),
        None,
        h.detach()[0],
        c.detach()[0],
        None,
        False,
        fastrnn.backends.resolve(m.backend, xp.device),
    )
    assert res[3].shape == (T, B, 4 * H) and res[4].shape == (T, B, H)
