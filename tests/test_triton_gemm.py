"""The Triton backend's GEMMs outside the recurrence kernels (kernels/gemm.py): the weight
gradients dW = dG^T X over all T*B rows, the input projection x @ W_ih^T + b and its input
gradient, with operands in the weights' dtype, fp32 accumulation and the recurrence's TF32
rule (fastrnn.numerics.dot_precision), not the matmul switch. Interpreter lane
(TRITON_INTERPRET=1) on CPU tensors; on a GPU the same tests run on CUDA."""

import os

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import numerics, testing
from fastrnn.testing import bound, rel_rms
from helpers import TWIN

triton = pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON = fastrnn.available_backends()["triton"]
pytestmark = pytest.mark.skipif(TRITON != "available", reason=f"triton backend: {TRITON}")
fastrnn.backends._import("fastrnn.kernels")
from fastrnn.kernels import gemm  # noqa: E402

DEV = "cuda" if CUDA and not INTERP else "cpu"
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("FASTRNN_POISON", "1")  # unwritten fp32 partials are NaN


@pytest.fixture
def launches(monkeypatch):
    """Every launch of gemm.py's kernels: (kernel name, OPERAND, PRECISION), in order (the
    launch runs)."""
    seen = []
    real = gemm.launch

    def spy(kernel, p, **args):
        seen.append((kernel.fn.__name__, args["OPERAND"], args["PRECISION"]))
        return real(kernel, p, **args)

    monkeypatch.setattr(gemm, "launch", spy)
    return seen


@pytest.fixture
def matmul_tf32():
    """Sets torch.backends.cuda.matmul's TF32 switch; restores it (through the per-operator
    setting where this torch has one, which the legacy flag would not leave as it was)."""
    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if getattr(matmul, "fp32_precision", None) is not None else "allow_tf32"
    saved = getattr(matmul, name)

    def set_(allow: bool) -> None:
        matmul.allow_tf32 = allow

    yield set_
    setattr(matmul, name, saved)


# (K rows, M, N, splits): K not a multiple of BK (32), odd M and N (masked tile edges, two
# tiles along each at 80 x 70), forced splits with a short last one, and K = T*B of a
# 250-step sequence at batch 17
SIZES = [(1000, 20, 7, None), (1000, 20, 7, 3), (333, 80, 70, 4), (5, 17, 33, None), (4250, 12, 5, 7)]


@pytest.mark.parametrize("K,M,N,splits", SIZES, ids=[f"K{k}-M{m}-N{n}-s{s}" for k, m, n, s in SIZES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_weight_grad_is_the_rounded_operands_product(K, M, N, splits, dtype, monkeypatch):
    """dg^T x against the float64 product of the operands rounded to the weights' dtype
    (dg fp32 as from the workspace, x in the layer's dtype, rows at a stride wider than
    N): within 2e-5 (fp32 accumulation; measured 1e-7) and, for bf16/fp16, about 2e-3 away
    from the unrounded product (so the operands are rounded, and only once)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    gen = torch.Generator().manual_seed(K + M + N)
    dg = torch.randn(K, M, generator=gen).to(DEV)
    x = torch.randn(K, N + 3, generator=gen).to(DEV, dtype)[:, :N]  # row stride N + 3
    weight = torch.empty(M, N, device=DEV, dtype=dtype)
    got = gemm.weight_grad(dg, x, weight, splits)
    assert got.dtype == torch.float32 and got.shape == (M, N)
    want = dg.to(dtype).double().t() @ x.double()
    assert rel_rms(got, want) <= bound(torch.float32), rel_rms(got, want)
    if dtype != torch.float32:
        exact = dg.double().t() @ x.double()
        assert rel_rms(got, exact) > 1e-4, "the gradient operand was not rounded to the weights' dtype"
        assert rel_rms(got, exact) <= bound(dtype)


def test_weight_grad_splits_cover_every_row():
    """The split plan: each split a whole number of BK steps, the splits together exactly K
    rows, and a split count forced past K's steps rounded down to them."""
    for K in (1, 31, 32, 33, 1000, 4250, 100_000):
        for splits in (None, 1, 2, 3, 7, 10_000):
            p = gemm.plan(64, 16, K, torch.device("cpu"), splits)
            BK = p.meta["BK"]
            assert p.k_split % BK == 0 and (p.tiles[2] - 1) * p.k_split < K <= p.tiles[2] * p.k_split


def test_weight_grad_empty_rows_are_zero():
    got = gemm.weight_grad(torch.randn(0, 8, device=DEV), torch.randn(0, 5, device=DEV), torch.empty(0, device=DEV))
    assert torch.equal(got, torch.zeros(8, 5, device=DEV))


def test_which_backends_have_their_own_gemms():
    """The reference has no GEMMs of its own: its projections and weight gradients are torch
    matmuls. Triton's are kernels.gemm's; the C++ backend's are fastrnn._cpp's, which take
    oneDNN for large float32 products (tests/test_cpp.py) and are torch's own matmuls
    elsewhere: the same bits for float64 and for small products."""
    for entry in ("weight_grad", "linear", "linear_backward"):
        assert fastrnn.backends.gemm("reference", entry) is None
        assert fastrnn.backends.gemm("triton", entry) is getattr(gemm, entry)
    if fastrnn.available_backends()["cpp"] != "available":
        return
    from fastrnn import _cpp

    for entry in ("weight_grad", "linear", "linear_backward"):
        assert fastrnn.backends.gemm("cpp", entry) is getattr(_cpp, entry)
    for dtype, R in ((torch.float64, 4096), (torch.float32, 16)):
        x, w, b, dy = (torch.randn(*s, dtype=dtype) for s in ((R, 64), (256, 64), (256,), (R, 256)))
        assert torch.equal(_cpp.linear(x, w, b), torch.addmm(b, x, w.t()))
        dx, dw = _cpp.linear_backward(dy, x, w, True, True)
        assert torch.equal(dx, dy @ w)
        assert torch.equal(dw, dy.t() @ x)
        assert torch.equal(_cpp.weight_grad(dy, x, w), dy.t() @ x)


def _one_rounding(got, want, absolute, K, dtype) -> float:
    """max |got - want| / (half a unit in the last place of ``dtype`` + fp32 accumulation's
    bound K 2^-24 sum|a b|): at most 1 for an fp32-accumulated result rounded once to
    ``dtype``; ``want`` and ``absolute`` (the sum of |a b|) in float64."""
    mant = {torch.bfloat16: 7, torch.float16: 10}[dtype]
    _, e = torch.frexp(torch.maximum(got.double().abs(), want.abs()))
    ulp = torch.ldexp(torch.ones_like(want), e - 1 - mant)
    if dtype == torch.float16:
        ulp = ulp.clamp_min(2.0**-24)  # subnormals
    return ((got.double() - want).abs() / (0.5 * ulp + K * 2.0**-24 * absolute)).max().item()


# (rows R = T*B, I, G): I not a multiple of BK, rows past one 64-row tile, two tiles along G
LINEAR_SIZES = [(70, 5, 20), (130, 37, 80), (3, 33, 7)]


@pytest.mark.parametrize("R,I,G", LINEAR_SIZES, ids=[f"R{r}-I{i}-G{g}" for r, i, g in LINEAR_SIZES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_and_its_input_gradient(R, I, G, dtype, bias, monkeypatch):
    """x @ W^T + b and dy @ W against float64 of the same operands: fp32 within 2e-5
    (measured ~1e-7); bf16/fp16 elementwise within one rounding to their dtype of an fp32
    accumulation (half a unit in the last place plus K 2^-24 sum|a b|), which an
    accumulation in the half dtype (K 2^-8 or 2^-11 sum|a b|) is not."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    gen = torch.Generator().manual_seed(R + I + G)
    x = torch.randn(R, I + 2, generator=gen).to(DEV, dtype)[:, :I]  # row stride I + 2
    w = torch.randn(G, I, generator=gen).to(DEV, dtype)
    b = torch.randn(G, generator=gen).to(DEV, dtype) if bias else None
    dy = torch.randn(R, G, generator=gen).to(DEV, dtype)
    y = gemm.linear(x, w, b)
    dx, dw = gemm.linear_backward(dy, x, w, True, True)
    want_y = x.double() @ w.double().t() + (b.double() if bias else 0)
    want_dx, want_dw = dy.double() @ w.double(), dy.double().t() @ x.double()
    assert (y.dtype, dx.dtype, dw.dtype) == (dtype,) * 3 and y.shape == (R, G) and dx.shape == (R, I)
    if dtype == torch.float32:
        for got, want in ((y, want_y), (dx, want_dx), (dw, want_dw)):
            assert rel_rms(got, want) <= bound(torch.float32), rel_rms(got, want)
    else:
        ax, aw, ady = x.double().abs(), w.double().abs(), dy.double().abs()
        for got, want, absolute, K in (
            (y, want_y, ax @ aw.t() + (b.double().abs() if bias else 0), I),
            (dx, want_dx, ady @ aw, G),
            (dw, want_dw, ady.t() @ ax, R),
        ):
            assert _one_rounding(got, want, absolute, K, dtype) <= 1.0, _one_rounding(got, want, absolute, K, dtype)
    none = gemm.linear_backward(dy, x, w, False, False)
    assert none[0].numel() == 0 and none[1].numel() == 0


# LSTM with a projection (dW_hh and dW_hr; no h_prev copy forward, a copy for the reverse
# direction with lengths), GRU (h_prev always), Elman RNN
LAYER_CASES = [("lstm", {"proj_size": 4}), ("gru", {}), ("rnn", {"nonlinearity": "tanh"})]


@pytest.mark.parametrize("family,kw", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_layer_weight_grads_run_the_gemm_within_bounds(family, kw, dtype, launches, monkeypatch):
    """A bidirectional packed layer on the triton backend: its weight gradients come from
    weight_grad_kernel (launched with the weights' dtype as OPERAND), and every output and
    gradient is within the numerics table's bound against the reference (float64 for fp32
    weights, float32 for bf16)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    low = HALF.get(dtype, torch.float32)
    m = TWIN[family][0](5, 20, bidirectional=True, backend="triton", **kw).to(DEV, low)
    x = pack_padded_sequence(torch.randn(6, 3, 5, device=DEV), torch.tensor([6, 2, 4]), enforce_sorted=False)
    ref = testing.oracle(m, torch.float64 if low == torch.float32 else torch.float32)
    report = testing.compare(m, ref, x, sync_weights=False)
    assert report.passed, f"\n{report}"
    # per direction: dW_hh (two GEMMs without an h_prev copy, one with it), dW_hr; per layer:
    # the projection, dx and dW_ih
    per_direction = {"lstm": (3, 2), "gru": (1, 1), "rnn": (2, 1)}[family]
    kernels = [k for k, _, _ in launches]
    assert kernels.count("weight_grad_kernel") == sum(per_direction) + 1, kernels
    assert kernels.count("linear_kernel") == 2, kernels
    assert {op for _, op, _ in launches} == {dtype}


@pytest.mark.parametrize("flag", [False, True], ids=["cudnn_ieee", "cudnn_tf32"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_precision_follows_the_cudnn_rnn_switch(flag, dtype, launches, matmul_tf32, monkeypatch):
    """The GEMMs' PRECISION is the recurrence's rule (fastrnn.numerics.cudnn_rnn_tf32 for
    fp32 weights, IEEE for bf16, whose operands are bf16), whatever the matmul switch says
    (set to the opposite). The device test of tf32_allowed is lifted, as if these CPU
    tensors were on CUDA, so the switch is what decides."""
    monkeypatch.setattr(numerics, "tf32_allowed", lambda device, dt: dt == torch.float32 and numerics.cudnn_rnn_tf32())
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", flag)
    matmul_tf32(not flag)
    low = HALF.get(dtype, torch.float32)
    m = fastrnn.LSTM(5, 20, proj_size=4, backend="triton").to(DEV, low)
    out, _ = m(torch.randn(4, 3, 5, device=DEV, dtype=low, requires_grad=True))
    out.float().square().sum().backward()
    want = "tf32" if flag and dtype == "fp32" else "ieee"
    kernels = {"linear_kernel", "weight_grad_kernel"}
    assert {k for k, _, _ in launches} == kernels and {a[1:] for a in launches} == {(dtype, want)}, launches
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_op_passes_opcheck(bias):
    """fastrnn::linear's schema, fake kernel and autograd registration (its backward the op
    fastrnn::linear_backward), as torch.compile and AOTAutograd use them."""
    x = torch.randn(7, 5, device=DEV, requires_grad=True)
    w = torch.randn(12, 5, device=DEV, requires_grad=True)
    b = torch.randn(12, device=DEV, requires_grad=True) if bias else None
    torch.library.opcheck(torch.ops.fastrnn.linear.default, (x, w, b, "triton"))
    dy = torch.randn(7, 12, device=DEV)
    torch.library.opcheck(torch.ops.fastrnn.linear_backward.default, (dy, x.detach(), w.detach(), True, True, "triton"))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_eager_projection_skips_the_op_with_its_numbers(bias, monkeypatch):
    """In plain eager mode the projection runs the op's GEMMs without the op dispatch
    (_EagerLinear: a third of its host time with autograd): output and every gradient
    bitwise the op's. A batched gradient (is_grads_batched) takes the differentiable form."""
    from fastrnn import _projection

    x = torch.randn(7, 5, device=DEV, requires_grad=True)
    w = torch.randn(12, 5, device=DEV, requires_grad=True)
    b = torch.randn(12, device=DEV, requires_grad=True) if bias else None
    up = torch.randn(7, 12, device=DEV)
    params = [t for t in (x, w, b) if t is not None]
    calls = []
    apply = _projection._EagerLinear.apply
    monkeypatch.setattr(_projection._EagerLinear, "apply", lambda *a: calls.append(1) or apply(*a))
    y = _projection.project(x, w, b, "triton")
    got = torch.autograd.grad((y * up).sum(), params)
    assert calls == [1]
    y_op = torch.ops.fastrnn.linear(x, w, b, "triton")
    want = torch.autograd.grad((y_op * up).sum(), params)
    torch.testing.assert_close(y, y_op, rtol=0, atol=0)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    ups = torch.randn(3, 7, 12, device=DEV)
    y = _projection.project(x, w, b, "triton")
    batched = torch.autograd.grad(y, params, ups, is_grads_batched=True, retain_graph=True)
    for i in range(3):
        one = torch.autograd.grad(y, params, ups[i], retain_graph=True)
        for g, r in zip(batched, one, strict=True):
            assert rel_rms(g[i], r) <= bound(torch.float32)


def test_weights_past_int32_offsets_are_refused():
    """Offsets within a weight-shaped matrix are 32-bit: one of 2^31 elements is refused
    before anything launches (meta tensors: no memory is allocated)."""
    big = torch.empty(2**16, 2**15, device="meta")  # 2^31 elements
    with pytest.raises(ValueError, match="32-bit offsets"):
        gemm.linear(torch.empty(4, 2**15, device="meta"), big, None)
    with pytest.raises(ValueError, match="32-bit offsets"):
        gemm.weight_grad(torch.empty(4, 2**16, device="meta"), torch.empty(4, 2**15, device="meta"), big)
