"""Builds fastrnn's compiled part: the C++ CPU backend (csrc/ -> fastrnn._C), and maps the
Triton kernels (kernels/) into the package as fastrnn.kernels. Metadata lives in pyproject.toml.
DEBUG=1 builds the extension with -O0 -g; SANITIZE=1 with AddressSanitizer and UBSan (see
`make sanitize`)."""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def get_extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources:
        return []
    from torch.utils.cpp_extension import CppExtension

    debug = os.environ.get("DEBUG", "0") == "1"
    # Portable by default: no -march=native; the time loops are built per ISA level with target
    # attributes and one is picked at run time (csrc/recurrence.h).
    # -fno-trapping-math lets GCC if-convert the float clamps in cells.h (without it, "control
    # flow in loop" keeps the cell loops scalar); -ffp-contract=fast allows FMAs. Neither makes
    # results depend on anything but the binary and the ISA level picked at run time.
    cxx = ["-O0", "-g"] if debug else ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
    # SANITIZE=1 (make sanitize): AddressSanitizer + UBSan, every report fatal
    # (float-cast-overflow is not in -fsanitize=undefined: it catches a NaN or huge float cast to int)
    san = (
        ["-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all"]
        if os.environ.get("SANITIZE") == "1"
        else []
    )
    return [
        CppExtension(
            "fastrnn._C",
            sources,
            extra_compile_args={"cxx": cxx + san + (["-fno-omit-frame-pointer", "-g"] if san else []) + ["-std=c++17"]},
            extra_link_args=san,
        )
    ]


def cmdclass():
    if not get_extensions():
        return {}
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


setup(
    packages=["fastrnn", "fastrnn.kernels"],
    # the Triton kernels live in kernels/ at the top of the tree and ship inside the package;
    # a bare top-level `kernels` module would clash with PyPI's `kernels`
    package_dir={"fastrnn": "fastrnn", "fastrnn.kernels": "kernels"},
    ext_modules=get_extensions(),
    cmdclass=cmdclass(),
)
