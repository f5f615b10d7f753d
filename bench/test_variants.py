"""The TorchScript peers of the LSTM variants (``jit_premul`` in bench/providers.py) compute
what fastrnn's modules compute: outputs, final states and every gradient (input, initial
states, each parameter) within DESIGN.md's bounds (fp64 1e-9, fp32 2e-5 relative RMS).

    pytest bench/test_variants.py

A correctness check of the benchmark's peers, not a timing: seconds on a 2-core CPU.
"""

import pytest
import torch

import fastrnn
from bench.configs import VARIANTS
from bench.providers import FAST, JitVariant, build, providers
from fastrnn.testing import bound, rel_rms

# (cell, dtype, layer kwargs, T, B, I, H): odd sizes, each option of the peer once. One size
# throughout: every new shape costs the scripted loop a profiling and optimisation pass.
CASES = [
    ("peephole_lstm", torch.float64, {}, 11, 3, 5, 7),
    ("peephole_lstm", torch.float64, {"bias": False, "batch_first": True}, 11, 3, 5, 7),
    ("peephole_lstm", torch.float64, {"proj_size": 4}, 11, 3, 5, 7),
    ("peephole_lstm", torch.float32, {}, 11, 3, 5, 7),
    ("layernorm_lstm", torch.float64, {}, 11, 3, 5, 7),
    ("layernorm_lstm", torch.float64, {"bias": False, "eps": 1e-3, "batch_first": True}, 11, 3, 5, 7),
    ("layernorm_lstm", torch.float32, {}, 11, 3, 5, 7),
]


def _ids(case):
    cell, dtype, kw, T, B, I, H = case
    opts = "-".join(f"{k}{v}" for k, v in kw.items())
    return f"{cell}-T{T}-B{B}-I{I}-H{H}-{str(dtype)[6:]}" + (f"-{opts}" if opts else "")


def _randomise(m: torch.nn.Module) -> None:
    """Every parameter away from its initial value: LayerNorm gains off 1 and shifts off 0,
    peepholes large enough that the c paths matter."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            p.copy_(1 + 0.3 * r if "ln_" in name and "weight" in name else 0.5 * r)


def _run(model, x, hx, upstream):
    """Outputs and the gradients of x, h0, c0 and every parameter, for one upstream gradient."""
    for p in model.parameters():
        p.grad = None
    leaves = [t.detach().clone().requires_grad_() for t in (x, *hx)]
    y, (h_n, c_n) = model(leaves[0], (leaves[1], leaves[2]))
    outs = [y, h_n, c_n]
    torch.autograd.backward(outs, upstream)
    grads = {f"grad_{n}": t.grad for n, t in zip(("input", "h0", "c0"), leaves)}
    # the peer holds the layer as .ref: the same tensors under the layer's names
    grads.update({f"grad_{n.removeprefix('ref.')}": p.grad for n, p in model.named_parameters()})
    return dict(zip(("output", "h_n", "c_n"), (o.detach() for o in outs))) | grads


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_peer_matches_fastrnn(case):
    cell, dtype, kw, T, B, I, H = case
    torch.manual_seed(0)
    layer = FAST[cell](I, H, dtype=dtype, **kw)
    _randomise(layer)
    peer = JitVariant(cell, layer)
    P = kw.get("proj_size") or H
    x = torch.randn((B, T, I) if kw.get("batch_first") else (T, B, I), dtype=dtype)
    hx = (torch.randn(1, B, P, dtype=dtype), torch.randn(1, B, H, dtype=dtype))
    y_shape = (B, T, P) if kw.get("batch_first") else (T, B, P)
    upstream = [torch.randn(y_shape, dtype=dtype), torch.randn(1, B, P, dtype=dtype), torch.randn(1, B, H, dtype=dtype)]
    ours = _run(layer, x, hx, upstream)
    limit = bound(dtype)
    # TorchScript's profiling executor runs the loop as written first and its optimised graph
    # (the one the benchmark times, after warm-up) later: every call is checked
    for call in range(3):
        theirs = _run(peer, x, hx, upstream)
        assert ours.keys() == theirs.keys()
        for name, a in ours.items():
            assert a is not None, name
            assert theirs[name] is not None, name
            assert a.shape == theirs[name].shape, name
            err = rel_rms(theirs[name], a)
            assert err <= limit, f"call {call}, {name}: rel-RMS {err:.3e} > {limit:.0e}"


@pytest.mark.parametrize("cell", VARIANTS)
def test_providers_share_weights(cell):
    """Each provider of the variants suite built from one module computes the same function
    (fastrnn.LSTM of the same size shares the LSTM-shaped weights it has)."""
    torch.manual_seed(0)
    ref = FAST[cell](6, 8)
    _randomise(ref)
    x = torch.randn(7, 2, 6)
    names = providers(cell, torch.device("cpu"), "variants")
    fast = [n for n in names if n.startswith("fastrnn[")]
    assert names == [*fast, "jit_premul", *(f"fastrnn.LSTM{n[len('fastrnn') :]}" for n in fast)]
    want = JitVariant(cell, ref)(x)[0]
    for name in names:
        m = build(name, cell, ref)
        if name.startswith("fastrnn.LSTM["):
            assert isinstance(m, fastrnn.LSTM)
            assert torch.equal(m.weight_hh_l0, ref.weight_hh_l0)
            continue
        with torch.no_grad():
            got = m(x)[0]
        assert rel_rms(got, want) <= bound(torch.float32), name


def test_peer_refuses_what_it_does_not_run():
    with pytest.raises(ValueError, match="one unidirectional layer"):
        JitVariant("peephole_lstm", FAST["peephole_lstm"](4, 4, num_layers=2))
    with pytest.raises(ValueError, match="one unidirectional layer"):
        JitVariant("layernorm_lstm", FAST["layernorm_lstm"](4, 4, bidirectional=True))
    with pytest.raises(ValueError, match="padded 3-D"):
        JitVariant("peephole_lstm", FAST["peephole_lstm"](4, 4))(torch.randn(5, 4))
