"""Triton backend. CPU lane: TRITON_INTERPRET=1 on small shapes (every cell, both kernel
shapes, forward and backward, packed, bidirectional, projection), against the float64
reference at the fp32 bound, with every kernel output and workspace NaN-poisoned. GPU lane
(CUDA only): odd sizes, long sequences, fp16/bf16 against the fp32 reference, the TF32
policy, again for both kernel shapes."""
import os

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import testing
from helpers import CELLS, TWIN

CUDA = torch.cuda.is_available()
INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"
pytestmark = pytest.mark.skipif(fastrnn.available_backends()["triton"] != "available",
                                reason=f"triton backend: {fastrnn.available_backends()['triton']}")
DEV = "cuda" if CUDA and not INTERP else "cpu"


# On a GPU the persistent kernels run too, with several programs along the hidden axis
# (the CPU lane tests them in test_persistent_lstm_vs_reference).
SHAPES = ["sequence", "step"] + (["persistent"] if DEV == "cuda" else [])


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("FASTRNN_POISON", "1")


@pytest.fixture(params=SHAPES)
def shape(request, monkeypatch):
    """Run the test with the sequence kernel (weights on chip) and with the step kernels."""
    monkeypatch.setenv("FASTRNN_TRITON_KERNEL", request.param)
    return request.param


def _model(family, kw, dtype=torch.float32, **more):
    return TWIN[family][0](5, 6, backend="triton", **kw, **more).to(DEV, dtype)


@pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_interpreter_parity_vs_reference(cid, family, kw, kind, shape):
    m = _model(family, kw, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 5, device=DEV)
    h0 = torch.randn(4, 3, m.proj_size or 6, device=DEV)
    hx = (h0, torch.randn(4, 3, 6, device=DEV)) if family == "lstm" else h0
    if kind == "packed":
        x = pack_padded_sequence(x, torch.tensor([2, 5, 3]), enforce_sorted=False)
    report = testing.compare(m, testing.oracle(m), x, hx, sync_weights=False)
    assert report.passed, f"\n{report}"


@pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_interpreter_half_precision_vs_fp32_reference(cid, family, kw, dtype, shape):
    """fp16/bf16 weights and inputs: products with half operands and fp32 accumulation,
    state and cell math in fp32, outputs in the input dtype; against the fp32 reference at
    the half-precision bound."""
    m = TWIN[family][0](5, 20, bidirectional=True, backend="triton", **kw).to(DEV, dtype)
    x = pack_padded_sequence(torch.randn(6, 3, 5, device=DEV), torch.tensor([6, 2, 4]), enforce_sorted=False)
    report = testing.compare(m, testing.oracle(m, torch.float32), x, sync_weights=False)
    assert report.passed, f"\n{report}"


@pytest.mark.parametrize("cid,family,kw", CELLS[:3], ids=[c[0] for c in CELLS[:3]])
def test_multiple_hidden_chunks_and_batch_blocks(cid, family, kw, shape):
    """hidden > one step-kernel tile (BH = 64; the sequence kernel takes it whole in a
    128-wide tile) and batch > one program (BLOCK_B = 16)."""
    m = TWIN[family][0](3, 70, backend="triton", **kw).to(DEV)
    x = torch.randn(3, 18, 3, device=DEV)
    report = testing.compare(m, testing.oracle(m), x, sync_weights=False)
    assert report.passed, f"\n{report}"


def test_gru_without_bias(shape):
    m = fastrnn.GRU(5, 6, bias=False, backend="triton").to(DEV)
    x = pack_padded_sequence(torch.randn(4, 3, 5, device=DEV), torch.tensor([4, 1, 3]), enforce_sorted=False)
    report = testing.compare(m, testing.oracle(m), x, sync_weights=False)
    assert report.passed, f"\n{report}"


@pytest.mark.parametrize("family,kw", [("lstm", {}), ("gru", {}), ("gru", {"bias": False})],
                         ids=["lstm", "gru", "gru_nobias"])
@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_persistent_vs_reference(family, kw, kind, monkeypatch):
    """The persistent kernels (LSTM without projection, GRU) with two batch blocks. Under
    the interpreter programs run one after another, so only one program along the hidden
    axis (H <= 64) can pass the grid barrier; a GPU runs the multi-program grid (TestGPU)."""
    monkeypatch.setenv("FASTRNN_TRITON_KERNEL", "persistent")
    m = TWIN[family][0](5, 20, num_layers=2, bidirectional=True, backend="triton", **kw).to(DEV)
    x = torch.randn(6, 18, 5, device=DEV)
    if kind == "packed":
        x = pack_padded_sequence(x, torch.randint(1, 7, (18,)), enforce_sorted=False)
    report = testing.compare(m, testing.oracle(m), x, sync_weights=False)
    assert report.passed, f"\n{report}"


def test_persistent_grid_must_be_resident():
    from fastrnn.kernels._common import persistent_grid_ok

    cpu = torch.device("cpu")
    assert persistent_grid_ok(4, 1, cpu) and not persistent_grid_ok(1, 2, cpu)
    if CUDA:
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        gpu = torch.device("cuda")
        assert persistent_grid_ok(1, sms, gpu) and not persistent_grid_ok(2, sms, gpu)


def test_kernel_shape_rule(monkeypatch):
    """The sequence kernel while the padded fp32 weight tiles fit RESIDENT_BYTES (64 KiB),
    the step kernels beyond; FASTRNN_TRITON_KERNEL overrides, and a bad value is an error."""
    from fastrnn.kernels._common import kernel_shape

    monkeypatch.delenv("FASTRNN_TRITON_KERNEL", raising=False)
    assert kernel_shape(4, 64, 64, False) == "sequence"      # 4 x 64 x 64 x 4 B = 64 KiB
    assert kernel_shape(4, 65, 65, False) == "step"          # pads to 128
    assert kernel_shape(4, 64, 32, True) == "sequence"       # (4 + 1) x 64 x 32 x 4 B
    assert kernel_shape(3, 64, 64, False) == "sequence"
    assert kernel_shape(1, 128, 128, False) == "sequence"
    assert kernel_shape(1, 256, 256, False) == "step"
    monkeypatch.setenv("FASTRNN_TRITON_KERNEL", "step")
    assert kernel_shape(1, 8, 8, False) == "step"
    monkeypatch.setenv("FASTRNN_TRITON_KERNEL", "persistent")
    assert kernel_shape(4, 1024, 1024, False) == "persistent"
    monkeypatch.setenv("FASTRNN_TRITON_KERNEL", "resident")
    with pytest.raises(ValueError, match="FASTRNN_TRITON_KERNEL"):
        kernel_shape(1, 8, 8, False)


@pytest.mark.skipif(not CUDA or INTERP, reason="needs a CUDA device")
class TestGPU:
    @pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
    def test_half_precision_vs_fp32_reference(self, cid, family, kw, dtype, shape):
        m = TWIN[family][0](64, 200, num_layers=2, bidirectional=True, backend="triton", **kw).cuda().to(dtype)
        x = torch.randn(63, 3, 64, device="cuda")
        ref = testing.oracle(m, torch.float32)
        report = testing.compare(m, ref, x, sync_weights=False)
        assert report.passed, f"\n{report}"

    @pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
    @pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "tf32"])
    def test_fp32_odd_sizes_vs_torch_nn(self, cid, family, kw, tf32, monkeypatch, shape):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
        m = TWIN[family][0](64, 200, num_layers=2, bidirectional=True, backend="triton", **kw).cuda()
        n = TWIN[family][1](64, 200, num_layers=2, bidirectional=True, **kw).cuda()
        x = torch.randn(63, 3, 64, device="cuda")
        report = testing.compare(m, n, x)
        assert report.passed, f"\n{report}"

    def test_long_sequence(self):
        """T = 100k on the sequence kernel (auto picks it at H=32)."""
        m = fastrnn.LSTM(16, 32, backend="triton").cuda()
        x = torch.randn(100_000, 2, 16, device="cuda")
        out, _ = m(x)
        out.sum().backward()
        assert torch.isfinite(out).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())
