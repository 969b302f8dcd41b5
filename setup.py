"""Build fastmlr, with its C++/CUDA extension ``fastmlr._C`` when csrc/ has sources.

FASTMLR_WITH_CUDA chooses the extension: unset builds the CUDA kernels when a
CUDA toolkit is found (CUDA_HOME, or the real nvcc behind the one on PATH)
whose major version matches the CUDA that torch was built with, and the
CPU-only extension otherwise, saying why in one line; 1 builds them whatever
the versions (torch then checks them itself); 0 builds the CPU-only extension.
"""

import glob
import importlib.util
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_toolkit():
    """fastmlr/toolkit.py, the one CUDA toolkit lookup (loaded by path: the build may not have HERE on sys.path)."""
    spec = importlib.util.spec_from_file_location("fastmlr_toolkit", os.path.join(HERE, "fastmlr", "toolkit.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_toolkit = _load_toolkit()
nvcc_version = _toolkit.nvcc_version

# GPUs the CUDA kernels are compiled for: machine code for Ampere (8.0, 8.6),
# Ada (8.9) and Hopper (9.0), plus Hopper's PTX, which the driver compiles at
# load time for any newer GPU (Blackwell 10.x/12.x and later) instead of
# failing with "no kernel image is available". nvcc 13 also accepts 10.0 and
# 12.0 here, at about a quarter more build time each; nvcc 13 rejects 7.x.
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"

# -g0 drops the debug info that Python's CFLAGS ask for: with torch's headers it
# doubles the object size and slows each compile noticeably. -fno-trapping-math
# lets GCC if-convert the clamps and selects of the CPU kernels' inner loops so
# they vectorise; it changes no result, only whether FP exceptions may trap.
CXX_FLAGS = ["-O3", "-fopenmp", "-g0", "-fno-trapping-math"]
# CUDA's own accuracy, spelled out (these are nvcc's defaults, which
# --use_fast_math would replace): IEEE round-to-nearest division and square
# root, denormals kept (no flush to zero), and tanhf/expf from CUDA's math
# library (within 2 ulp) rather than the hardware approximations. FMA
# contraction stays on, as on the CPU (GCC contracts too): one rounding
# instead of two. csrc/car_math.h states what the kernels promise.
NVCC_FLAGS = ["-O3", "-ftz=false", "-prec-div=true", "-prec-sqrt=true", "-fmad=true"]


def cuda_build_decision(with_cuda_env, cuda_home, nvcc_ver, torch_cuda):
    """Whether to build the CUDA kernels, and the one line to print when not (or None).

    with_cuda_env: $FASTMLR_WITH_CUDA (None, "0" or "1"); cuda_home: the toolkit
    root whose bin/nvcc exists, or None; nvcc_ver: its "major.minor" or None
    when unreadable; torch_cuda: torch.version.cuda (None for a CPU-only torch).
    """
    if with_cuda_env == "0":
        return False, None
    forced = with_cuda_env == "1"
    if cuda_home is None:
        if forced:
            raise SystemExit("fastmlr: FASTMLR_WITH_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the "
                             "folder whose bin/ holds nvcc")
        return False, ("fastmlr: no CUDA toolkit found (no CUDA_HOME, no nvcc on PATH); building the CPU-only "
                       "extension (set CUDA_HOME to build the CUDA kernels, FASTMLR_WITH_CUDA=0 to silence this)")
    if forced or nvcc_ver is None:
        return True, None
    if torch_cuda is None:
        return False, (f"fastmlr: this torch has no CUDA (torch.version.cuda is None) but {cuda_home} has nvcc "
                       f"{nvcc_ver}; building the CPU-only extension (FASTMLR_WITH_CUDA=1 to build the CUDA "
                       "kernels anyway, FASTMLR_WITH_CUDA=0 to silence this)")
    if nvcc_ver.split(".")[0] != str(torch_cuda).split(".")[0]:
        return False, (f"fastmlr: nvcc in {cuda_home} is CUDA {nvcc_ver} but torch was built with CUDA "
                       f"{torch_cuda} (major versions differ, torch refuses to mix them); building the CPU-only "
                       f"extension (set CUDA_HOME to a CUDA {str(torch_cuda).split('.')[0]}.x toolkit, or "
                       "FASTMLR_WITH_CUDA=1 to try anyway, FASTMLR_WITH_CUDA=0 to silence this)")
    return True, None


def _extensions():
    cpp = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cu = sorted(glob.glob("csrc/cuda/*.cu"))
    if not cpp:
        return [], {}
    import torch
    from torch.utils import cpp_extension

    env = os.environ.get("FASTMLR_WITH_CUDA")
    cuda_home = None
    if cu and env != "0":
        cuda_home = _toolkit.usable_cuda_home()
    with_cuda, why = False, None
    if cu:
        with_cuda, why = cuda_build_decision(env, cuda_home, cuda_home and nvcc_version(cuda_home),
                                             torch.version.cuda)
    if why:
        print(why)
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        ext = cpp_extension.CUDAExtension(
            "fastmlr._C",
            cpp + cu,
            include_dirs=[os.path.join(HERE, "csrc")],
            define_macros=[("FASTMLR_WITH_CUDA", "1")],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "fastmlr._C",
            cpp,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(
    packages=find_packages(include=["fastmlr", "fastmlr.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
