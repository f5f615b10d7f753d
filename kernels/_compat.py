"""Differences between the Triton releases fastrnn supports (3.6 on the GPU image, 3.9 here)
that the kernels' callers would otherwise meet."""

from __future__ import annotations

from fastrnn.backends import _interpreting


def interpreter_scalar_index() -> bool:
    """Under TRITON_INTERPRET=1, Triton 3.6's interpreter turns a scalar kernel argument used
    as an index (``range(T)``) into an int with ``int(array)`` on a one-element array, which
    numpy >= 2.4 refuses (TypeError: only 0-dimensional arrays can be converted to Python
    scalars); Triton 3.9 squeezes the array first. Re-set ``__index__`` the way 3.9 does,
    after the interpreter's own patch of the tensor class and inside the same patch scope (so
    it is undone with it). Harmless where the interpreter already squeezes. Returns whether
    the fix is in place."""
    if not _interpreting():
        return False
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None:
        return False
    if getattr(original, "_scalar_index_fix", False):
        return True

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched._scalar_index_fix = True
    interpreter._patch_lang_tensor = patched
    return True
