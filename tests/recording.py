"""Helpers of the tests that record a model (torch.jit.trace / script, ONNX export) and
compare what the recording computes with the eager module: tests/test_interop.py (torch.nn's
cells) and tests/test_variants_interop.py (the variants)."""

import io
import warnings

import torch

from fastrnn.testing import bound, rel_rms

BOUND = bound(torch.float32)


def flat(out):
    """(output, h) / (output, (h, c)) / h / (h, c) -> list of tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    res = []
    for o in out:
        res.extend(flat(o))
    return res


def assert_close(got, want, what):
    """Same number of results, same shapes, each within the float32 bound (relative RMS)."""
    got, want = flat(got), flat(want)
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, f"{what}: result {i}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        err = rel_rms(a, b)
        assert err <= BOUND, f"{what}: result {i}: rel-RMS {err:.2e} > {BOUND:.0e}"


def reload(scripted):
    """A TorchScript module saved and loaded back."""
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    return torch.jit.load(buf)


def trace(module, example, grad: bool):
    """torch.jit.trace with its own check on, failing on any mismatch it reports."""
    with warnings.catch_warnings(record=True) as caught, torch.set_grad_enabled(grad):
        warnings.simplefilter("always")
        traced = torch.jit.trace(module, example, check_trace=True)
    complaints = [
        str(w.message)
        for w in caught
        if issubclass(w.category, torch.jit.TracerWarning)
        and ("does not match" in str(w.message) or "nondeterministic" in str(w.message))
    ]
    assert not complaints, complaints
    return traced


def ort_outputs(session, args):
    """Run an ONNX Runtime session on the flattened ``args``."""
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), flat(args))}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]
