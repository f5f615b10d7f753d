"""The drop-in contract: classes, constructor, parameters, state_dict, repr, structure of
outputs, backend selection, convert, and the public parity helpers."""

import copy
import inspect
import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from fastrnn import backends, testing

PAIRS = [
    (fastrnn.LSTM, nn.LSTM),
    (fastrnn.GRU, nn.GRU),
    (fastrnn.RNN, nn.RNN),
    (fastrnn.LSTMCell, nn.LSTMCell),
    (fastrnn.GRUCell, nn.GRUCell),
    (fastrnn.RNNCell, nn.RNNCell),
]
LAYERS = PAIRS[:3]
CTORS = {
    nn.LSTM: [
        ((4, 8), {}),
        ((4, 8, 2, False, True, 0.25, True, 3), {}),
        ((4, 8), dict(num_layers=3, bidirectional=True, proj_size=5, batch_first=True)),
    ],
    nn.GRU: [((4, 8), {}), ((4, 8, 2, True, False, 0.5, True), {})],
    nn.RNN: [((4, 8), {}), ((4, 8, 2, "relu", False, True, 0.1, True), {}), ((4, 8), dict(nonlinearity="relu"))],
    nn.LSTMCell: [((4, 8), {}), ((4, 8, False), {})],
    nn.GRUCell: [((4, 8), {}), ((4, 8), dict(bias=False))],
    nn.RNNCell: [((4, 8), {}), ((4, 8, True, "relu"), {})],
}
CASES = [(o, t, a, k) for o, t in PAIRS for a, k in CTORS[t]]


@pytest.mark.parametrize(
    "ours,theirs,args,kwargs", CASES, ids=[f"{t.__name__}-{i}" for i, (o, t, a, k) in enumerate(CASES)]
)
def test_same_module_surface(ours, theirs, args, kwargs):
    torch.manual_seed(3)
    a = ours(*args, **kwargs)
    torch.manual_seed(3)
    b = theirs(*args, **kwargs)
    assert isinstance(a, theirs)
    assert repr(a) == repr(b)
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]
    # same initialisation, draw for draw
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    sd = b.state_dict()
    a.load_state_dict(sd, strict=True)
    b.load_state_dict(a.state_dict(), strict=True)
    assert list(a.state_dict()) == list(sd)


@pytest.mark.parametrize("cls", [p[0] for p in PAIRS], ids=[p[1].__name__ for p in PAIRS])
def test_backend_keyword_only_and_serialisation(cls):
    m = cls(4, 8, backend="reference")
    assert m.backend == "reference"
    kind = inspect.signature(cls.__init__).parameters["backend"].kind
    assert kind is inspect.Parameter.KEYWORD_ONLY
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m2 = torch.load(buf, weights_only=False)
    assert type(m2) is cls and m2.backend == "reference"
    m3 = copy.deepcopy(m)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), m3.parameters()))


@pytest.mark.parametrize("ours,theirs", LAYERS, ids=[p[1].__name__ for p in LAYERS])
def test_packed_sequence_in_packed_sequence_out(ours, theirs):
    a = ours(4, 8, bidirectional=True)
    b = theirs(4, 8, bidirectional=True)
    b.load_state_dict(a.state_dict())
    packed = pack_padded_sequence(torch.randn(6, 3, 4), torch.tensor([2, 6, 4]), enforce_sorted=False)
    out_a, h_a = a(packed)
    out_b, h_b = b(packed)
    assert isinstance(out_a, PackedSequence)
    for x, y in zip(out_a, out_b):
        assert (x is None and y is None) or torch.equal(x, y) if x is None or not x.is_floating_point() else True
    assert torch.equal(out_a.batch_sizes, out_b.batch_sizes)
    assert torch.equal(out_a.sorted_indices, out_b.sorted_indices)
    assert torch.equal(out_a.unsorted_indices, out_b.unsorted_indices)
    assert testing.rel_rms(out_a.data, out_b.data) <= 2e-5


def test_available_backends_reports_each_with_reason():
    av = fastrnn.available_backends()
    assert set(av) == {"triton", "cpp", "reference"}
    assert av["reference"] == "available"
    for v in av.values():
        assert v == "available" or v.startswith("unavailable: ")


def test_env_variable_selects_backend(monkeypatch):
    monkeypatch.setenv("FASTRNN_BACKEND", "reference")
    assert backends.resolve("auto", torch.device("cpu")) == "reference"
    # an explicit choice wins over the environment
    monkeypatch.setenv("FASTRNN_BACKEND", "cpp")
    assert backends.resolve("reference", torch.device("cpu")) == "reference"
    monkeypatch.setenv("FASTRNN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FASTRNN_BACKEND must be one of"):
        backends.resolve("auto", torch.device("cpu"))


def test_explicit_backend_on_wrong_device(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="fastrnn backend 'cpp' runs on CPU tensors, but the input is on cuda"):
        backends.resolve("cpp", torch.device("cuda"))
    with pytest.raises(RuntimeError, match="fastrnn backend 'triton' runs on CUDA tensors"):
        backends.resolve("triton", torch.device("cpu"))


def test_meta_tensors_resolve_to_the_reference(monkeypatch):
    """Meta tensors hold no data for a kernel: every choice runs the reference equations."""
    monkeypatch.setenv("FASTRNN_BACKEND", "cpp")
    for name in ("auto", "cpp", "triton", "reference"):
        assert backends.resolve(name, torch.device("meta")) == "reference"
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.resolve("nonsense", torch.device("meta"))


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    monkeypatch.setattr(
        backends, "_load", lambda name: (None, "not built") if name == "cpp" else (fastrnn.reference, "")
    )
    backends._warn_fallback.cache_clear()
    m = fastrnn.GRU(4, 8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        m(torch.randn(3, 2, 4))
        m(torch.randn(3, 2, 4))
    ours = [w for w in seen if "fastrnn" in str(w.message)]
    assert len(ours) == 1 and "cpp backend is unavailable (not built)" in str(ours[0].message)
    # the warning points at the user's line, not at fastrnn's internals
    assert ours[0].filename == __file__
    backends._warn_fallback.cache_clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fastrnn.LSTMCell(4, 8)(torch.randn(2, 4))
    assert [w.filename for w in seen if "fastrnn" in str(w.message)] == [__file__]
    backends._warn_fallback.cache_clear()


def test_convert_in_place_keeps_parameters_and_optimizer():
    class Sub(nn.LSTM):
        pass

    model = nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 8), nn.ModuleList([nn.GRUCell(8, 8), Sub(4, 4)]))
    params = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=r"left \S*Sub unconverted: it subclasses LSTM"):
        out = fastrnn.convert(model, backend="reference")
    assert out is model
    assert type(model[1]) is fastrnn.LSTM and model[1].backend == "reference"
    assert type(model[2][0]) is fastrnn.GRUCell
    assert type(model[2][1]) is Sub
    assert all(p is q for p, q in zip(params, model.parameters()))
    y, _ = model[1](model[0](torch.randn(5, 2, 3)))
    before = model[1].weight_hh_l0.detach().clone()
    y.sum().backward()
    opt.step()
    assert not torch.equal(before, model[1].weight_hh_l0)


def test_compare_report_and_cli(capsys):
    lstm = fastrnn.LSTM(3, 5, backend="reference")
    report = testing.compare(lstm, nn.LSTM(3, 5), torch.randn(4, 2, 3))
    assert report.passed and report["output"].bound == 2e-5
    names = [r.name for r in report.rows]
    assert names[:3] == ["output", "h_n", "c_n"] and "grad_input" in names and "grad_weight_hh_l0" in names
    assert testing.main(["--cell", "gru", "--hidden", "8", "--batch", "2", "--seq", "5", "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "vs torch.nn" in out and "vs reference (float64)" in out


def test_compare_detects_a_wrong_module():
    a = fastrnn.GRU(3, 5)
    b = nn.GRU(3, 5)
    report = testing.compare(a, b, torch.randn(4, 2, 3), sync_weights=False)
    assert not report.passed and report.failures()
