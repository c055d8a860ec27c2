"""Install sns-engine, with the optional CUDA extension `sns_engine._C` when it can be built.

All metadata lives in pyproject.toml. The extension (csrc/: the fused DDPM tick, re-noise and
level argmax) is built only when torch has CUDA and nvcc is on PATH; otherwise the install is
pure Python and `backend="cuda"` says so clearly at run time. It never fails for lack of a GPU.
Its sources and compiler flags (sm_90, named explicitly) are in csrc/manifest.json, which
sns_engine.ops.cuda_ext and the compile test read too; read here as plain JSON, without importing
the package.
"""

import json
import os
import shutil
from pathlib import Path

from setuptools import setup

MANIFEST = Path(__file__).resolve().parent / "csrc" / "manifest.json"


def cuda_extensions():
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError:
        return {}, []
    if torch.version.cuda is None or shutil.which("nvcc") is None:
        return {}, []
    spec = json.loads(MANIFEST.read_text())
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", spec["cuda_arch_list"])
    ext = CUDAExtension(
        "sns_engine._C",
        [f"csrc/{source}" for source in spec["sources"]],
        extra_compile_args={"cxx": spec["cxx_flags"], "nvcc": spec["nvcc_flags"]},
    )
    return {"build_ext": BuildExtension}, [ext]


cmdclass, ext_modules = cuda_extensions()
setup(cmdclass=cmdclass, ext_modules=ext_modules)
