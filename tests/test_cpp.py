"""C++ backend specifics: direct-call validation, non-contiguous input, long sequences."""

import pytest
import torch

import fastrnn
from conftest import BACKEND
from fastrnn import testing

pytestmark = [
    pytest.mark.skipif(fastrnn.available_backends()["cpp"] != "available", reason="C++ extension not built"),
    pytest.mark.skipif(BACKEND not in ("cpp", "auto"), reason="runs in the cpp lane"),
]


def test_direct_calls_raise_not_crash():
    from fastrnn import _C

    x = torch.randn(3, 2, 8)
    with pytest.raises(RuntimeError, match="w_hh must have shape"):
        _C.lstm_forward(x, torch.randn(8, 3), None, torch.randn(2, 2), torch.randn(2, 2), None, False)
    with pytest.raises(RuntimeError, match="supports float32 and float64, got Half"):
        _C.rnn_forward(x.half(), torch.randn(8, 8).half(), torch.randn(2, 8).half(), None, False, "tanh")
    with pytest.raises(RuntimeError, match="lengths must be a CPU int64 tensor"):
        _C.gru_forward(torch.randn(3, 2, 6), torch.randn(6, 2), None, torch.randn(2, 2), torch.tensor([1, 2, 3]), False)
    with pytest.raises(RuntimeError, match="h0 has dtype Double"):
        _C.rnn_forward(x, torch.randn(8, 8), torch.randn(2, 8).double(), None, False, "tanh")
    with pytest.raises(RuntimeError, match="Unknown nonlinearity"):
        _C.rnn_forward(x, torch.randn(8, 8), torch.randn(2, 8), None, False, "gelu")


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
def test_non_contiguous_input_and_state(family):
    cls, ncls = {
        "lstm": (fastrnn.LSTM, torch.nn.LSTM),
        "gru": (fastrnn.GRU, torch.nn.GRU),
        "rnn": (fastrnn.RNN, torch.nn.RNN),
    }[family]
    ours = cls(5, 7, num_layers=2, bidirectional=True, backend="cpp")
    theirs = ncls(5, 7, num_layers=2, bidirectional=True)
    x = torch.randn(3, 9, 5).transpose(0, 1)  # (T, B, I) view of a batch-major buffer
    h = torch.randn(3, 4, 7).transpose(0, 1)  # (L*D, B, H), non-contiguous
    hx = (h, torch.randn(4, 3, 7)) if family == "lstm" else h
    assert not x.is_contiguous()
    report = testing.compare(ours, theirs, x, hx)
    assert report.passed, f"\n{report}"


def test_long_sequence_memory_is_linear_in_T():
    """T=20000: forward+backward run, match the float64 reference, and the saved workspace
    is exactly (T, B, 4H) gates + (T, B, H) cell states."""
    T, B, I, H = 20000, 2, 4, 8
    lstm = fastrnn.LSTM(I, H, backend="cpp").double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    x_proj = torch.randn(T, B, 4 * H, dtype=torch.float64)
    y, h, c, gates, cs = torch.ops.fastrnn.lstm_recurrence(
        x_proj,
        lstm.weight_hh_l0.detach(),
        None,
        torch.zeros(B, H, dtype=torch.float64),
        torch.zeros(B, H, dtype=torch.float64),
        None,
        False,
        "cpp",
    )
    assert gates.shape == (T, B, 4 * H) and cs.shape == (T, B, H)
    report = testing.compare(lstm, testing.oracle(lstm), x, sync_weights=False)
    assert report.passed, f"\n{report}"


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_inference_keeps_no_backward_workspace(family):
    """Under no_grad the per-step gates/cell states are not kept, and the result is the
    same as with them (bitwise: same kernels, same order)."""
    from fastrnn import ops

    T, B, H = 50, 3, 8
    x = torch.randn(T, B, (4 if family == "lstm" else 3) * H)
    w = torch.randn(x.shape[-1], H) * 0.3
    h0 = torch.randn(B, H)
    lengths = torch.tensor([50, 20, 35])
    args = (x, w, None, h0, torch.randn(B, H)) if family == "lstm" else (x, w, torch.randn(H), h0)
    entry = ops.lstm if family == "lstm" else ops.gru
    with torch.no_grad():
        lean = entry(*args, lengths, True, "cpp")
    full = (torch.ops.fastrnn.lstm_recurrence if family == "lstm" else torch.ops.fastrnn.gru_recurrence)(
        *args, lengths, True, "cpp"
    )
    assert lean[-1].numel() == 0 and full[-1].shape[0] == T
    n_state = 3 if family == "lstm" else 2
    assert all(torch.equal(a, b) for a, b in zip(lean[:n_state], full[:n_state]))


# Every tensor argument of every entry point, given in a wrong shape, dtype, device or layout,
# must raise a RuntimeError: the kernels index all buffers with sizes taken from one tensor
# (x_proj forward, the saved gates backward), so an unchecked size is an out-of-bounds access
# (e.g. lstm_backward without projection read past dh when h0 had fewer than H columns).
T_, B_, H_, P_ = 3, 2, 5, 3


def _lstm_fwd(proj):
    P = P_ if proj else H_
    return (
        "lstm_forward",
        [
            torch.randn(T_, B_, 4 * H_),
            torch.randn(4 * H_, P),
            torch.randn(P, H_) if proj else None,
            torch.randn(B_, P),
            torch.randn(B_, H_),
            torch.tensor([3, 2]),
            False,
            True,
        ],
        {0: {0}},
    )


def _lstm_bwd(proj):
    P = P_ if proj else H_
    return (
        "lstm_backward",
        [
            torch.randn(T_, B_, P),
            torch.randn(B_, P),
            torch.randn(B_, H_),
            torch.randn(4 * H_, P),
            torch.randn(P, H_) if proj else None,
            torch.randn(B_, H_),
            torch.rand(T_, B_, 4 * H_),
            torch.randn(T_, B_, H_),
            torch.tensor([3, 2]),
            False,
        ],
        {},
    )


def _gru_fwd():
    return (
        "gru_forward",
        [
            torch.randn(T_, B_, 3 * H_),
            torch.randn(3 * H_, H_),
            torch.randn(H_),
            torch.randn(B_, H_),
            torch.tensor([3, 2]),
            False,
            True,
        ],
        {0: {0}},
    )


def _gru_bwd():
    return (
        "gru_backward",
        [
            torch.randn(T_, B_, H_),
            torch.randn(B_, H_),
            torch.randn(3 * H_, H_),
            torch.randn(T_, B_, H_),
            torch.rand(T_, B_, 4 * H_),
            torch.tensor([3, 2]),
            False,
        ],
        {},
    )


def _rnn_fwd():
    return (
        "rnn_forward",
        [torch.randn(T_, B_, H_), torch.randn(H_, H_), torch.randn(B_, H_), torch.tensor([3, 2]), False, "tanh"],
        {0: {0}},
    )


def _rnn_bwd():
    return (
        "rnn_backward",
        [
            torch.randn(T_, B_, H_),
            torch.randn(B_, H_),
            torch.randn(H_, H_),
            torch.rand(T_, B_, H_).tanh(),
            torch.tensor([3, 2]),
            False,
            "tanh",
        ],
        {},
    )


def _peephole_fwd(proj):
    name, args, free = _lstm_fwd(proj)
    return "peephole_" + name, [*args[:3], torch.randn(3 * H_), *args[3:]], free


def _peephole_bwd(proj):
    name, args, free = _lstm_bwd(proj)
    return "peephole_" + name, [*args[:5], torch.randn(3 * H_), *args[5:]], free


def _layernorm_fwd():
    G = 4 * H_
    return (
        "layernorm_lstm_forward",
        [
            torch.randn(T_, B_, G),
            torch.randn(G, H_),
            torch.ones(G),
            torch.zeros(G),
            torch.ones(H_),
            torch.zeros(H_),
            torch.randn(B_, H_),
            torch.randn(B_, H_),
            torch.tensor([3, 2]),
            False,
            1e-5,
            True,
        ],
        {0: {0}},
    )


def _layernorm_bwd():
    return (
        "layernorm_lstm_backward",
        [
            torch.randn(T_, B_, H_),
            torch.randn(B_, H_),
            torch.randn(B_, H_),
            torch.randn(4 * H_, H_),
            torch.ones(4 * H_),
            torch.ones(H_),
            torch.randn(B_, H_),
            torch.rand(T_, B_, 9 * H_ + 2),
            torch.randn(T_, B_, H_),
            torch.tensor([3, 2]),
            False,
        ],
        {},
    )


ENTRIES = [
    ("lstm_fwd", _lstm_fwd(False)),
    ("lstm_fwd_proj", _lstm_fwd(True)),
    ("lstm_bwd", _lstm_bwd(False)),
    ("lstm_bwd_proj", _lstm_bwd(True)),
    ("gru_fwd", _gru_fwd()),
    ("gru_bwd", _gru_bwd()),
    ("rnn_fwd", _rnn_fwd()),
    ("rnn_bwd", _rnn_bwd()),
    ("peephole_lstm_fwd", _peephole_fwd(False)),
    ("peephole_lstm_fwd_proj", _peephole_fwd(True)),
    ("peephole_lstm_bwd", _peephole_bwd(False)),
    ("peephole_lstm_bwd_proj", _peephole_bwd(True)),
    ("layernorm_lstm_fwd", _layernorm_fwd()),
    ("layernorm_lstm_bwd", _layernorm_bwd()),
]


def _wrong_versions(t, free_dims):
    """(label, tensor) for every way t can be wrong; free_dims: dims whose size defines T."""
    if t.dtype == torch.long:  # lengths
        yield "int32", t.int()
        yield "above T", torch.tensor([T_ + 1, 2])
        yield "negative", torch.tensor([3, -1])
        yield "2-D", t.unsqueeze(0)
        yield "short", t[:1]
        yield "meta", t.to("meta")
        return
    for d in range(t.dim()):
        if d in free_dims:
            continue
        for delta in (-1, 1):
            shape = list(t.shape)
            shape[d] += delta
            yield f"size({d}){delta:+d}", torch.randn(shape)
    yield "one dim fewer", t[0] if t.dim() > 1 else t.sum()
    yield "one dim more", t.unsqueeze(0)
    yield "float64", t.double()
    yield "meta", t.to("meta")
    yield "sparse", t.to_sparse()


@pytest.mark.parametrize("eid,entry", ENTRIES, ids=[e[0] for e in ENTRIES])
def test_every_wrong_argument_raises(eid, entry):
    from fastrnn import _C

    name, args, free = entry
    fn = getattr(_C, name)
    fn(*args)  # the unmodified arguments are valid
    tried = 0
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            continue
        for _label, bad in _wrong_versions(a, free.get(i, set())):
            wrong = list(args)
            wrong[i] = bad
            with pytest.raises(RuntimeError, match=r"fastrnn cpp backend|Expected sequence length"):
                fn(*wrong)
            tried += 1
    assert tried >= 30


@pytest.mark.parametrize("delta", [-2, -1, 1, 2])
def test_lstm_backward_state_width_must_match_without_projection(delta):
    """h0/dh_n/dy of width P != H without w_hr: consistent with each other, but the kernel's dh
    rows are H long (was a heap overflow for P < H, wrong numbers for P > H)."""
    from fastrnn import _C

    T, B, H = 4, 3, 6
    P = H + delta
    with pytest.raises(RuntimeError, match="must have shape"):
        _C.lstm_backward(
            torch.randn(T, B, P),
            torch.randn(B, P),
            torch.randn(B, H),
            torch.randn(4 * H, P),
            None,
            torch.randn(B, H),
            torch.rand(T, B, 4 * H),
            torch.randn(T, B, H),
            None,
            False,
        )


# ----------------------------------------------------------------------------------------
# The LSTM variants' entry points against the reference backend's (the same contract, run
# by fastrnn.reference's loops in float64): every output and every loop result, fp64 to the
# fp64 bound and fp32 to the fp32 bound, with unsorted lengths, reverse, a projection
# (peephole), B = 1 and widths that leave vector tails (H = 5, 37).
# ----------------------------------------------------------------------------------------
def _variant_case(cell, T, B, H, P=None, lengths=None, reverse=False, biases=(True, True)):
    return pytest.param(
        dict(cell=cell, T=T, B=B, H=H, P=P, lengths=lengths, reverse=reverse, biases=biases),
        id=f"{cell}-T{T}-B{B}-H{H}"
        + (f"-P{P}" if P else "")
        + ("-lengths" if lengths else "")
        + ("-rev" if reverse else "")
        + ("" if biases == (True, True) else f"-bias{int(biases[0])}{int(biases[1])}"),
    )


VARIANT_CASES = [
    _variant_case("peephole_lstm", 7, 4, 5),
    _variant_case("peephole_lstm", 7, 4, 5, lengths=[3, 7, 1, 5]),
    _variant_case("peephole_lstm", 7, 4, 5, lengths=[3, 7, 1, 5], reverse=True),
    _variant_case("peephole_lstm", 6, 3, 5, P=3, lengths=[2, 6, 4], reverse=True),
    _variant_case("peephole_lstm", 6, 3, 37, P=16, lengths=[6, 1, 4]),
    _variant_case("peephole_lstm", 9, 1, 37, reverse=True),
    _variant_case("peephole_lstm", 5, 2, 64),
    _variant_case("layernorm_lstm", 7, 4, 5),
    _variant_case("layernorm_lstm", 7, 4, 5, lengths=[3, 7, 1, 5]),
    _variant_case("layernorm_lstm", 7, 4, 5, lengths=[3, 7, 1, 5], reverse=True, biases=(False, True)),
    _variant_case("layernorm_lstm", 6, 3, 37, lengths=[6, 1, 4], biases=(True, False)),
    _variant_case("layernorm_lstm", 9, 1, 37, reverse=True, biases=(False, False)),
    _variant_case("layernorm_lstm", 5, 2, 64, reverse=True),
]


def _variant_args(case):
    """(forward arguments, upstream gradients) in float64, every value exact in float32 (so the
    float32 comparison measures the kernels' rounding, not the inputs')."""
    T, B, H, P = case["T"], case["B"], case["H"], case["P"] or case["H"]

    def r(*shape, scale=1.0, shift=0.0):
        return (shift + scale * torch.randn(*shape)).double()

    lengths = torch.tensor(case["lengths"]) if case["lengths"] else None
    x, w_hh, h0, c0 = r(T, B, 4 * H), r(4 * H, P, scale=P**-0.5), r(B, P), r(B, H)
    if case["cell"] == "peephole_lstm":
        w_hr = r(P, H, scale=H**-0.5) if case["P"] else None
        args = (x, w_hh, w_hr, r(3 * H, scale=0.5), h0, c0, lengths, case["reverse"])
    else:
        b_r, b_c = case["biases"]
        ln = (r(4 * H, scale=0.3, shift=1.0), r(4 * H, scale=0.3) if b_r else None)
        ln += (r(H, scale=0.3, shift=1.0), r(H, scale=0.3) if b_c else None)
        args = (x, w_hh, *ln, h0, c0, lengths, case["reverse"], 1e-5)
    return args, (r(T, B, P), r(B, P), r(B, H))


def _backward_args(case, args, out, upstream):
    dy, dh_n, dc_n = upstream
    if case["cell"] == "peephole_lstm":
        x, w_hh, w_hr, w_ch, h0, c0, lengths, reverse = args
        return (dy, dh_n, dc_n, w_hh, w_hr, w_ch, c0, out[3], out[4], lengths, reverse)
    x, w_hh, w_r, b_r, w_c, b_c, h0, c0, lengths, reverse, eps = args
    return (dy, dh_n, dc_n, w_hh, w_r, w_c, c0, out[3], out[4], lengths, reverse)


def _inactive(case):
    """(T, B) bool: the steps outside each sequence."""
    if not case["lengths"]:
        return torch.zeros(case["T"], case["B"], dtype=torch.bool)
    return torch.arange(case["T"]).unsqueeze(1) >= torch.tensor(case["lengths"]).unsqueeze(0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", VARIANT_CASES)
def test_variant_entries_match_reference(case, dtype):
    from fastrnn import _cpp, reference

    name = case["cell"]
    args, upstream = _variant_args(case)
    cast = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    ours = getattr(_cpp, f"{name}_forward")(*cast)
    ref = getattr(reference, f"{name}_forward")(*args)
    tol = testing.bound(dtype)
    inactive = _inactive(case)
    # the reference records a workspace row for inactive steps too; the contract leaves them free
    active_ws = ~inactive.unsqueeze(-1)
    for label, a, b in zip(("y", "h_n", "c_n", "ws", "cs"), ours, ref, strict=True):
        assert a.dtype == dtype and a.shape == b.shape, label
        if label == "ws":
            assert torch.isfinite(a).all()
            a, b = a * active_ws, b * active_ws
        err = testing.rel_rms(a, b)
        assert err <= tol, f"{label}: rel-RMS {err:.3e} > {tol:.0e}"
    assert not ours[0][inactive].any(), "y rows of inactive steps must be zero"

    # no workspace: the same results, bitwise, and empty workspaces
    lean = getattr(_cpp, f"{name}_forward")(*cast, workspace=False)
    assert all(torch.equal(a, b) for a, b in zip(lean[:3], ours[:3]))
    assert lean[3].numel() == 0 and lean[4].numel() == 0

    # backward: each side from its own forward's workspace
    up = tuple(u.to(dtype) for u in upstream)
    grads = getattr(_cpp, f"{name}_backward")(*_backward_args(case, cast, ours, up))
    ref_grads = getattr(reference, f"{name}_backward")(*_backward_args(case, args, ref, upstream))
    labels = ("dx_proj", "dh0", "dc0")
    labels += ("dh_out",) if name == "peephole_lstm" else ("dgh", "sum_da_rhat", "sum_da", "sum_dc_shat", "sum_dc")
    for label, a, b in zip(labels, grads, ref_grads, strict=True):
        assert a.dtype == dtype and a.shape == b.shape, label
        err = testing.rel_rms(a, b)
        assert err <= tol, f"{label}: rel-RMS {err:.3e} > {tol:.0e}"
    assert not grads[0][inactive].any(), "dx_proj rows of inactive steps must be zero"
    if grads[3].numel():
        assert not grads[3][inactive].any(), f"{labels[3]} rows of inactive steps must be zero"
    if name == "peephole_lstm" and not case["P"]:
        assert grads[3].shape == (0,)


def test_layernorm_lstm_eps_must_be_finite_and_nonnegative():
    from fastrnn import _C

    T, B, H = 3, 2, 4
    args = [torch.randn(T, B, 4 * H), torch.randn(4 * H, H), torch.ones(4 * H), None, torch.ones(H), None]
    args += [torch.randn(B, H), torch.randn(B, H), None, False]
    for eps in (-1e-5, float("nan"), float("inf")):
        with pytest.raises(RuntimeError, match="eps must be finite and >= 0"):
            _C.layernorm_lstm_forward(*args, eps)
    _C.layernorm_lstm_forward(*args, 0.0)


# Sizes where oneDNN takes the float32 products (csrc/gemm.h: from 2^22 multiply-adds):
# the step product (B x H) @ (H x G*H) and the input projection (T*B x I) @ (I x G*H).
ONEDNN_LAYERS = [
    ("lstm_bidir_2layer", fastrnn.LSTM, torch.nn.LSTM, 64, 256, {"num_layers": 2, "bidirectional": True}),
    ("lstm_proj", fastrnn.LSTM, torch.nn.LSTM, 64, 256, {"proj_size": 96}),
    ("gru_bidir", fastrnn.GRU, torch.nn.GRU, 64, 320, {"bidirectional": True}),
    ("rnn_tanh", fastrnn.RNN, torch.nn.RNN, 128, 512, {}),
]
_G = {fastrnn.LSTM: 4, fastrnn.GRU: 3, fastrnn.RNN: 1}


def _onednn_or_skip():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch was built without oneDNN: every product takes torch's BLAS")


@pytest.mark.parametrize("cid,cls,ncls,I,H,kw", ONEDNN_LAYERS, ids=[c[0] for c in ONEDNN_LAYERS])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_onednn_products_match_torch_nn_and_the_reference(cid, cls, ncls, I, H, kw, packed):
    """Outputs, final states and every gradient against the float64 reference and torch.nn,
    at the float32 bounds, where the step products and the projection run on oneDNN."""
    _onednn_or_skip()
    from fastrnn import _C

    T, B = 7, 16
    G = _G[cls] * H
    assert _C.uses_onednn(B, H, G) and _C.uses_onednn(T * B, I, G)
    torch.manual_seed(0)
    ours = cls(I, H, backend="cpp", **kw)
    x = torch.randn(T, B, I)
    inp = (
        torch.nn.utils.rnn.pack_padded_sequence(x, torch.randint(1, T + 1, (B,)), enforce_sorted=False) if packed else x
    )
    for theirs in (testing.oracle(ours), ncls(I, H, **kw)):
        report = testing.compare(ours, theirs, inp)
        assert report.passed, f"\n{report}"


def _grads_at(threads: int, m, x, dy):
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        m.zero_grad()
        x = x.detach().requires_grad_()
        y, h = m(x)
        y.backward(dy)
        with torch.no_grad():
            y_inf, h_inf = m(x)  # the inference stack (csrc/stack.cpp), whole and chunked below
            y_long = m(x.repeat(8, 1, 1))[0]
        return [y, *h, x.grad, *(p.grad for p in m.parameters()), y_inf, *h_inf, y_long]
    finally:
        torch.set_num_threads(prev)


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU], ids=["lstm", "gru"])
def test_onednn_results_do_not_depend_on_the_thread_count(cls):
    """Bitwise the same outputs, states and gradients at 1, 2 and 3 threads, the inference stack
    included (its 8x longer input is projected a chunk of steps at a time with the weights
    packed once), so a run reproduces on a machine with another core count."""
    _onednn_or_skip()
    torch.manual_seed(0)
    m = cls(64, 256, num_layers=2, bidirectional=True, backend="cpp")
    x, dy = torch.randn(7, 16, 64), torch.randn(7, 16, 512)
    one = _grads_at(1, m, x, dy)
    for threads in (2, 3):  # 3: another blocking of the outputs between threads
        for a, b in zip(one, _grads_at(threads, m, x, dy), strict=True):
            assert torch.equal(a, b)


def test_onednn_follows_torch_mkldnn_flag():
    """With torch.backends.mkldnn disabled every product takes torch's BLAS (or the C++
    kernel), and the layer still matches the reference."""
    _onednn_or_skip()
    from fastrnn import _C

    torch.manual_seed(0)
    ours = fastrnn.LSTM(64, 256, backend="cpp")
    x = torch.randn(5, 16, 64)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not _C.uses_onednn(16, 256, 1024)
        report = testing.compare(ours, testing.oracle(ours), x)
    assert report.passed, f"\n{report}"
    assert _C.uses_onednn(16, 256, 1024)


def test_onednn_route_does_not_depend_on_the_thread_count():
    """oneDNN splits a sum over K between threads for some shapes (huge K into a small
    output; narrow outputs): those stay off it at every thread count, and the route never
    depends on the count. The weight gradient on it matches the float64 product."""
    _onednn_or_skip()
    from fastrnn import _C

    shapes = [(1, 2**22, 4), (64, 20000, 128), (64, 20000, 1024), (64, 1024, 128), (16, 256, 1024), (2, 2**20, 64)]
    prev = torch.get_num_threads()
    try:
        routes = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            routes.append([_C.uses_onednn(*s) for s in shapes])
    finally:
        torch.set_num_threads(prev)
    assert routes[0] == routes[1] == routes[2] == [False, False, True, True, True, False]
    dy, x = torch.randn(800, 1024), torch.randn(800, 64)
    assert _C.uses_onednn(64, 800, 1024)
    want = dy.double().t() @ x.double()
    got = _C.weight_grad(dy, x)
    assert got.shape == (1024, 64)
    assert testing.rel_rms(got, want) < fastrnn.numerics.bound(torch.float32)


def test_onednn_projection_takes_any_bias_strides():
    """A bias that is a strided view (every other element, a column, an expanded scalar)
    gives the same projection as addmm on the oneDNN route too."""
    _onednn_or_skip()
    from fastrnn import _cpp

    x, w = torch.randn(64, 256), torch.randn(1024, 256)
    for b in (torch.randn(2048)[::2], torch.randn(1024, 3)[:, 1], torch.tensor([1.5]).expand(1024)):
        want = torch.addmm(b.double(), x.double(), w.double().t())
        for got in (_cpp.linear(x, w, b), torch.ops.fastrnn.linear(x, w, b, "cpp")):
            assert testing.rel_rms(got, want) < fastrnn.numerics.bound(torch.float32)
