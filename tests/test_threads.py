"""C++ backend threads: the time loops split the hidden units over torch's intra-op threads
(csrc/recurrence.h, csrc/pool.h). Every output and gradient must be bitwise the same whatever
the thread count: the threaded path is forced at small sizes (_C.set_thread_policy("always"))
and compared with torch.equal against one thread and against the unforced path."""

import multiprocessing
import threading

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from conftest import BACKEND

pytestmark = [
    pytest.mark.skipif(fastrnn.available_backends()["cpp"] != "available", reason="C++ extension not built"),
    pytest.mark.skipif(BACKEND not in ("cpp", "auto"), reason="runs in the cpp lane"),
]


@pytest.fixture(autouse=True)
def ext():
    from fastrnn import _C

    n = torch.get_num_threads()
    yield _C
    torch.set_num_threads(n)
    _C.set_thread_policy("auto")


FAMILIES = {
    "lstm": lambda i, h: fastrnn.LSTM(i, h, num_layers=2, bidirectional=True, backend="cpp"),
    "gru": lambda i, h: fastrnn.GRU(i, h, num_layers=2, bidirectional=True, backend="cpp"),
    "rnn_tanh": lambda i, h: fastrnn.RNN(i, h, num_layers=2, bidirectional=True, backend="cpp"),
    "rnn_relu": lambda i, h: fastrnn.RNN(i, h, num_layers=2, bidirectional=True, nonlinearity="relu", backend="cpp"),
    "peephole": lambda i, h: fastrnn.PeepholeLSTM(i, h, num_layers=2, bidirectional=True, backend="cpp"),
}


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        return [out.data]
    return [t for o in out for t in _flat(o)]


def _run(model, x, lengths, grad):
    """Outputs (and with grad, the gradients of x, h0 and every parameter) as one list."""
    B = x.shape[1]
    layers = model.num_layers * 2
    is_lstm = isinstance(model, (torch.nn.LSTM, fastrnn.PeepholeLSTM))
    g = torch.Generator().manual_seed(7)
    h0 = torch.randn(layers, B, model.hidden_size, generator=g, dtype=x.dtype)
    hx = (h0, torch.randn(layers, B, model.hidden_size, generator=g, dtype=x.dtype)) if is_lstm else h0
    x = x.detach().clone().requires_grad_(grad)
    hx = tuple(t.clone().requires_grad_(grad) for t in hx) if is_lstm else hx.clone().requires_grad_(grad)
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.set_grad_enabled(grad):
        out = _flat(model(inp, hx))
    if not grad:
        return out
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in out)
    leaves = [x, *(hx if is_lstm else (hx,)), *model.parameters()]
    return [t.detach() for t in out] + list(torch.autograd.grad(loss, leaves))


def _assert_equal(a, b, what):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert torch.equal(u, v), f"{what}: tensor {i} differs, max |diff| {(u - v).abs().max().item():.3g}"


def _loop_calls(family, dtype, T, B, H, lengths, reverse):
    """The family's forward (with and without the saved workspace) and backward loops, called
    directly on fixed random operands: only the loops run, so only their thread count varies
    (torch's own ops, e.g. the input projection, may round differently on 1 and 2 threads)."""
    from fastrnn import _C

    g = torch.Generator().manual_seed(3)

    def r(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    gates = {"lstm": 4, "peephole": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}[family]
    x, w, h0, c0 = r(T, B, gates * H), r(gates * H, H, scale=1 / H**0.5), r(B, H), r(B, H)
    dy, dh, dc, extra = r(T, B, H), r(B, H), r(B, H), r(3 * H)
    if family in ("lstm", "peephole"):
        peep = (extra,) if family == "peephole" else ()
        fwd = _C.lstm_forward if family == "lstm" else _C.peephole_lstm_forward
        bwd = _C.lstm_backward if family == "lstm" else _C.peephole_lstm_backward

        def run():
            y, hn, cn, ws, cs = fwd(x, w, None, *peep, h0, c0, lengths, reverse, True)
            nows = fwd(x, w, None, *peep, h0, c0, lengths, reverse, False)
            return [y, hn, cn, ws, cs, *nows, *bwd(dy, dh, dc, w, None, *peep, c0, ws, cs, lengths, reverse)]

    elif family == "gru":
        b_hn, h_prev = extra[:H], r(T, B, H)

        def run():
            y, hn, acts = _C.gru_forward(x, w, b_hn, h0, lengths, reverse, True)
            nows = _C.gru_forward(x, w, None, h0, lengths, reverse, False)
            return [y, hn, acts, *nows, *_C.gru_backward(dy, dh, w, h_prev, acts, lengths, reverse)]

    else:
        act = family[4:]

        def run():
            y, hn = _C.rnn_forward(x, w, h0, lengths, reverse, act, True)
            return [y, hn, *_C.rnn_backward(dy, dh, w, y, lengths, reverse, act)]

    return run


@pytest.mark.parametrize("case", ["plain", "lengths", "reverse", "lengths_reverse"])
@pytest.mark.parametrize("B", [1, 3, 8])
@pytest.mark.parametrize("H", [13, 20, 64, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_loops_bitwise_equal_across_thread_counts(family, dtype, H, B, case, ext):
    """Every output of the forward loop (with and without the saved workspace) and of the
    backward loop: torch.set_num_threads(1), (2) with the threaded loop forced, (2) never
    threaded, (2) the automatic choice (and 3 forced, where the slices are uneven)."""
    _C = ext
    T = 9
    lengths = torch.tensor([T, 2, 5, 0, T, 4, 6, 3][:B]) if "lengths" in case else None
    run = _loop_calls(family, dtype, T, B, H, lengths, "reverse" in case)
    results = {}
    for name, threads, policy in [
        ("one", 1, "always"),
        ("forced", 2, "always"),
        ("never", 2, "never"),
        ("auto", 2, "auto"),
        ("three", 3, "always"),
    ]:
        torch.set_num_threads(threads)
        _C.set_thread_policy(policy)
        jobs = _C.threaded_jobs()
        results[name] = run()
        if policy == "always":
            assert (_C.threaded_jobs() > jobs) == (threads > 1), f"{name}: threaded loop ran: {threads > 1}"
    for name in ("forced", "never", "auto", "three"):
        _assert_equal(results["one"], results[name], f"1 thread vs {name}")


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("H", [20, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_modules_threaded_equal_unthreaded(family, dtype, H, packed, ext):
    """End to end through the modules (2 layers, bidirectional, B = 3), torch on 2 threads:
    outputs, final states and every gradient are the same with the loops threaded (forced)
    and single-threaded. (Across torch thread counts the modules differ through torch's own
    ops, not the loops; the test above covers the loops.)"""
    _C = ext
    torch.manual_seed(0)
    model = FAMILIES[family](5, H).to(dtype)
    T, B = 7, 3
    x = torch.randn(T, B, 5, dtype=dtype)
    lengths = torch.tensor([T, 2, 5]) if packed else None
    torch.set_num_threads(2)
    for grad in (False, True):
        _C.set_thread_policy("never")
        ref = _run(model, x, lengths, grad)
        _C.set_thread_policy("always")
        jobs = _C.threaded_jobs()
        got = _run(model, x, lengths, grad)
        assert _C.threaded_jobs() > jobs, "the threaded loop did not run"
        _assert_equal(ref, got, f"grad={grad}: threaded vs single-threaded loops")


@pytest.mark.parametrize("barrier", [1, 2, 5, 6])
@pytest.mark.parametrize("family", ["lstm", "gru", "rnn_tanh"])
def test_giving_up_threads_part_way(family, barrier, ext):
    """A loop whose partner thread is descheduled gives up its threads at a barrier and thread 0
    finishes alone (csrc/pool.h); forced here at the k-th barrier (the GRU's backward has two
    per step, so even k fall between its cell backward and its product): results unchanged."""
    _C = ext
    run = _loop_calls(family, torch.float32, 9, 3, 64, torch.tensor([9, 4, 6]), True)
    torch.set_num_threads(2)
    _C.set_thread_policy("never")
    ref = run()
    _C.set_thread_policy("always")
    _C.give_up_threads_at(barrier)
    try:
        degraded = _C.degraded_jobs()
        got = run()
        assert _C.degraded_jobs() > degraded
    finally:
        _C.give_up_threads_at(0)
    _assert_equal(ref, got, f"giving up at barrier {barrier}")


def test_more_threads_than_slices(ext):
    """Four threads (more than this machine may have cores) on H = 20 float32: two slices of
    16 and 4 units, two threads with empty slices that only meet the barriers."""
    _C = ext
    model = FAMILIES["gru"](5, 20)
    x = torch.randn(9, 3, 5)
    torch.set_num_threads(4)
    _C.set_thread_policy("never")
    ref = _run(model, x, None, True)
    _C.set_thread_policy("always")
    _assert_equal(ref, _run(model, x, None, True), "1 vs 4 threads")


def test_concurrent_python_threads(ext):
    """Several Python threads calling at once: one gets the pool, the others run
    single-threaded (the pool is never shared by two loops); all results equal."""
    _C = ext
    model = FAMILIES["lstm"](5, 64)
    x = torch.randn(30, 3, 5)
    torch.set_num_threads(2)
    _C.set_thread_policy("never")
    ref = _run(model, x, None, True)
    _C.set_thread_policy("always")
    results, errors = [None] * 4, []

    def work(i):
        try:
            for _ in range(5):
                results[i] = _run(model, x, None, True)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in results:
        _assert_equal(ref, r, "concurrent caller")


def _child(q, expected):
    # only the loops, called directly at small sizes: no torch op here starts OpenMP threads
    # (libgomp's team does not survive a fork either; that is torch's, not the loops')
    from fastrnn import _C

    torch.set_num_threads(2)
    _C.set_thread_policy("always")
    jobs = _C.threaded_jobs()
    out = _loop_calls("gru", torch.float32, 9, 3, 64, None, False)()
    q.put((_C.threaded_jobs() > jobs, all(torch.equal(u, v) for u, v in zip(out, expected))))


def test_fork_after_use(ext):
    """A forked child (e.g. a DataLoader worker) has none of the parent's pool threads: it
    must build its own instead of waiting on them forever."""
    _C = ext
    torch.set_num_threads(2)
    _C.set_thread_policy("always")
    jobs = _C.threaded_jobs()
    expected = _loop_calls("gru", torch.float32, 9, 3, 64, None, False)()  # the parent's pool exists
    assert _C.threaded_jobs() > jobs
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, expected))
    p.start()
    p.join(timeout=120)
    if p.exitcode is None:
        p.kill()
    assert p.exitcode == 0, f"child exit code {p.exitcode}"
    ran_threaded, equal = q.get(timeout=5)
    assert ran_threaded and equal


def test_thread_policy_argument_checked(ext):
    with pytest.raises(RuntimeError, match="thread policy must be"):
        ext.set_thread_policy("sometimes")
