"""Install sns-engine, with the optional CUDA extension `sns_engine._C` when it can be built.

All metadata lives in pyproject.toml. The extension (csrc/: the fused DDPM tick, re-noise and
level argmax) is built only when torch has CUDA and nvcc is on PATH; otherwise the install is
pure Python and `backend="cuda"` says so clearly at run time. It never fails for lack of a GPU.
"""

import os
import shutil

from setuptools import setup


def cuda_extensions():
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError:
        return {}, []
    if torch.version.cuda is None or shutil.which("nvcc") is None:
        return {}, []
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # H100/H200 (sm_90) only, named explicitly
    ext = CUDAExtension(
        "sns_engine._C",
        ["csrc/bindings.cpp", "csrc/ddpm_update.cu", "csrc/level_argmax.cu"],
        extra_compile_args={"cxx": ["-O3"],
                            "nvcc": ["-O3", "-gencode=arch=compute_90,code=sm_90", "-Werror",
                                     "all-warnings"]},
    )
    return {"build_ext": BuildExtension}, [ext]


cmdclass, ext_modules = cuda_extensions()
setup(cmdclass=cmdclass, ext_modules=ext_modules)
