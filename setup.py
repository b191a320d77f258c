"""Builds torch_quant._C against the installed torch.

Install with `pip install --no-build-isolation -e .` so that the build sees the
torch already in the environment (see the README and the Makefile).

The extension is a CUDAExtension when CUDA sources exist, nvcc is found and the
installed torch was built with CUDA; otherwise a CppExtension. Set
TORCH_QUANT_FORCE_CPU=1 to build the CPU-only extension regardless.
"""

import glob
import os
import re

from setuptools import find_packages, setup
from torch.utils.cpp_extension import (
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern), recursive=True))


def use_cuda(cuda_sources):
    if os.environ.get("TORCH_QUANT_FORCE_CPU", "0") not in ("", "0"):
        return False
    return bool(cuda_sources) and CUDA_HOME is not None and torch.version.cuda is not None


def extension():
    cpp_sources = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    cuda_sources = sources("csrc/cuda/*.cu")
    # -ffp-contract=off: no compiler-made fused multiply-adds, so every ISA
    # build rounds exactly where quant_math.h says it does.
    cxx = ["-O3", "-fopenmp", "-fvisibility=hidden", "-ffp-contract=off"]
    # at::parallel_for runs its body serially unless the extension itself is
    # compiled with OpenMP (ATen/ParallelOpenMP.h is header-only).
    link = ["-fopenmp"]
    if use_cuda(cuda_sources):
        # Machine code for Turing (sm_75: T4s), Ampere (sm_80) and Hopper
        # (sm_90), and PTX of the newest, which the driver compiles for newer
        # GPUs (Blackwell sm_100 / sm_120), unless the user names other
        # architectures; torch would otherwise ask the (absent) GPU.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "7.5;8.0;9.0+PTX")
        # recorded in the library (_C._cuda_arch_list()) for the test that
        # lists its SASS and PTX; '_'-joined, a macro with no quotes or ';'
        archs = "_".join(a for a in re.split(r"[;\s]+", os.environ["TORCH_CUDA_ARCH_LIST"]) if a)
        return CUDAExtension(
            "torch_quant._C",
            cpp_sources + cuda_sources,
            extra_compile_args={"cxx": cxx + ["-DTORCH_QUANT_WITH_CUDA",
                                              f"-DTORCH_QUANT_CUDA_ARCHS={archs}"],
                                "nvcc": ["-O3", "-DTORCH_QUANT_WITH_CUDA"]},
            extra_link_args=link,
        )
    return CppExtension("torch_quant._C", cpp_sources, extra_compile_args={"cxx": cxx},
                        extra_link_args=link)


setup(
    packages=find_packages(include=["torch_quant", "torch_quant.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
