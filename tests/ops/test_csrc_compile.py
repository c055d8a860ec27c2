"""csrc/ compiles warning-free for sm_90, and its arithmetic is right, without a GPU.

Each kernel .cu is compiled standalone with the extension's own nvcc flags (csrc/manifest.json,
what setup.py builds with: -gencode for sm_90, -Werror=all-warnings), `-c`, both files in
parallel, and linked into a shared library; its `sns_*_host` twins (the same __host__
__device__ element functions the kernels run) are then called through ctypes and checked against
the torch references: exact Philox words, normals, the tick, the re-noise, the argmax and its tie
rule. bindings.cpp (torch headers) gets a g++ syntax check. Skips without nvcc.
Runtime ≈ 10 s for the .cu files on two cores, + ≈ 20 s for the bindings check.
"""

import ctypes
import os
import shutil
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest
import torch

from sns_engine.ops import rng, update
from sns_engine.ops.cuda_ext import CSRC, build_spec
from sns_engine.ops.level_argmax import level_argmax_reference

from .cases import clone, tick_case

SPEC = build_spec()
KERNEL_SOURCES = tuple(s for s in SPEC["sources"] if s.endswith(".cu"))
(BINDINGS,) = (s for s in SPEC["sources"] if s.endswith(".cpp"))
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 host code against the float64 oracle

P = ctypes.c_void_p
I32, U32, I64 = ctypes.c_int32, ctypes.c_uint32, ctypes.c_int64
SIGNATURES = {
    "sns_philox_normal_host": (P, P, P, U32, U32, I64, I64, P, P, P),
    "sns_ddpm_tick_host": (P, P, P, I32, P, I32, P, P, P, P, P, P, P, I32, U32, I64, I64),
    "sns_renoise_host": (P, P, P, P, P, P, I32, U32, U32, I64, I64),
    "sns_level_argmax_host": (P, I32, P, P, I32, I64, I64, I64, P, P),
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """({source: (returncode, log, seconds)} of the standalone compiles, linked library)."""
    out = tmp_path_factory.mktemp("csrc")
    start, jobs = time.perf_counter(), {}
    for src in KERNEL_SOURCES:
        cmd = [NVCC, *SPEC["nvcc_flags"], "-Xcompiler", "-fPIC", "-c", str(CSRC / src), "-o",
               str(out / f"{src}.o")]
        jobs[src] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
    results = {}
    for src, job in jobs.items():
        log = job.communicate()[0]
        results[src] = (job.returncode, log, time.perf_counter() - start)
    library = None
    if all(r[0] == 0 for r in results.values()):
        library = out / "libsns_host.so"
        subprocess.run([NVCC, "-shared", *(str(out / f"{s}.o") for s in KERNEL_SOURCES), "-o",
                        str(library)], check=True)
    return results, library


@pytest.fixture(scope="module")
def lib(compiled):
    path = compiled[1]
    if path is None:
        pytest.fail("csrc/ did not compile; see test_kernel_source_compiles")
    handle = ctypes.CDLL(str(path))
    for name, argtypes in SIGNATURES.items():
        getattr(handle, name).argtypes = argtypes
        getattr(handle, name).restype = ctypes.c_int
    return handle


def ptr(t: torch.Tensor) -> int:
    assert t.is_contiguous() and t.device.type == "cpu"
    return t.data_ptr()


@pytest.mark.parametrize("source", KERNEL_SOURCES)
def test_kernel_source_compiles(compiled, source, record_property):
    code, log, seconds = compiled[0][source]
    record_property("nvcc_seconds", round(seconds, 2))
    assert code == 0, log
    assert "warning" not in log.lower(), log


@pytest.mark.slow
def test_bindings_pass_a_syntax_check(tmp_path):
    """bindings.cpp against torch's headers (g++ -fsyntax-only; the CPU wheel lacks one generated
    CUDA header, stubbed here)."""
    from torch.utils.cpp_extension import include_paths

    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not on PATH")
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    homes = [os.environ.get("CUDA_HOME", ""), Path(NVCC).resolve().parents[1], "/usr/local/cuda"]
    cuda_include = next((Path(h) / "include" for h in homes
                         if h and (Path(h) / "include" / "cuda_runtime.h").is_file()), None)
    if cuda_include is None:
        pytest.skip("no CUDA include directory with cuda_runtime.h (set CUDA_HOME)")
    includes = [*include_paths(), str(tmp_path), sysconfig.get_paths()["include"],
                str(cuda_include)]
    cmd = [gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
           "-DTORCH_EXTENSION_NAME=sns_engine_C", *(f"-isystem{p}" for p in includes),
           str(CSRC / BINDINGS)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


def test_host_words_and_normals_match_torch(lib):
    g = torch.Generator().manual_seed(0)
    member = torch.randint(0, 2**40, (4,), generator=g)
    step = torch.tensor([0, 2**31 - 1, 5, 6], dtype=torch.int32)
    level = torch.tensor([0, 1, 1000, 7], dtype=torch.int32)
    numel = 333
    w0, w1 = (torch.empty(4, numel, dtype=torch.int32) for _ in range(2))
    z = torch.full((4, numel), float("nan"))
    for seed, stream in ((0, 0), (2**32 - 1, 3)):
        assert lib.sns_philox_normal_host(ptr(member), ptr(step), ptr(level), seed, stream, 4,
                                          numel, ptr(w0), ptr(w1), ptr(z)) == 0
        r0, r1 = rng.philox_words(seed, member, step, level, stream, numel)
        assert torch.equal(w0.long() & 0xFFFFFFFF, r0) and torch.equal(w1.long() & 0xFFFFFFFF, r1)
        want = rng.normal(seed, member, step, level, stream, (numel,), torch.float64)
        torch.testing.assert_close(z.double(), want, rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("eps_dtype", [torch.float32, torch.bfloat16])
def test_host_tick_matches_reference(lib, eps_dtype):
    case = tick_case(9, 2, 8, eps_dtype=eps_dtype, seed=21)
    ref = clone(case, torch.float64)
    update.tick_reference(*(ref[k] for k in ("x", "y", "eps_x", "eps_y", "n_x", "n_y", "moves",
                                             "counts", "member", "step", "seed", "coefs")))
    bf16 = int(eps_dtype == torch.bfloat16)
    assert lib.sns_ddpm_tick_host(
        ptr(case["x"]), ptr(case["y"]), ptr(case["eps_x"]), bf16, ptr(case["eps_y"]), bf16,
        ptr(case["n_x"]), ptr(case["n_y"]), ptr(case["moves"]), ptr(case["counts"]),
        ptr(case["member"]), ptr(case["step"]), ptr(case["coefs"]), case["coefs"].shape[1],
        case["seed"], 9, case["x"][0].numel()) == 0
    for k in ("x", "y"):
        torch.testing.assert_close(case[k].double(), ref[k], **TOL)
    for k in ("n_x", "n_y", "counts"):
        assert torch.equal(case[k], ref[k]), k


def test_host_renoise_matches_reference(lib):
    g = torch.Generator().manual_seed(3)
    frame = torch.randn(5, 2, 4, 4, generator=g)
    level = torch.tensor([0, 1, 10, 4, 0], dtype=torch.int32)
    member, step = torch.arange(5) + 2**33, torch.full((5,), 9, dtype=torch.int32)
    sqrt_ab, sqrt_1mab = torch.rand(11, generator=g), torch.rand(11, generator=g)
    ref = frame.double()
    update.renoise_reference(ref, level, member, step, 4, sqrt_ab, sqrt_1mab, rng.STREAM_RENOISE_Y)
    assert lib.sns_renoise_host(ptr(frame), ptr(level), ptr(member), ptr(step), ptr(sqrt_ab),
                                ptr(sqrt_1mab), 11, 4, rng.STREAM_RENOISE_Y, 5, 32) == 0
    torch.testing.assert_close(frame.double(), ref, **TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_host_level_argmax_matches_reference(lib, dtype):
    g = torch.Generator().manual_seed(5)
    f = torch.randint(-3, 4, (7, 12), generator=g).to(dtype)
    w = torch.randint(-2, 3, (40, 12), generator=g).to(dtype)
    w[[9, 30]] = w[2].clone()                       # exact ties: the lowest index must win
    b = torch.zeros(40, dtype=dtype)
    b[[2, 9, 30]] = 50
    idx, p_max = torch.full((7,), -1), torch.full((7,), float("nan"))
    bf16 = int(dtype == torch.bfloat16)
    assert lib.sns_level_argmax_host(ptr(f), bf16, ptr(w), ptr(b), bf16, 7, 40, 12, ptr(idx),
                                     ptr(p_max)) == 0
    ref_idx, ref_p = level_argmax_reference(f.double(), w.double(), b.double(), True)
    assert torch.equal(idx, ref_idx) and (idx == 2).all()
    torch.testing.assert_close(p_max.double(), ref_p, rtol=1e-5, atol=1e-6)
