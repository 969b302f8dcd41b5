"""Build fastmlr, with its C++/CUDA extension ``fastmlr._C`` when csrc/ has sources.

CUDAExtension when a CUDA toolkit is found (CUDA_HOME, or the real nvcc behind
the one on PATH), CppExtension otherwise; FASTMLR_WITH_CUDA=0 forces CPU only.
"""

import glob
import os
import shutil
import subprocess

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    # The nvcc on PATH may be a wrapper script; the real one reports its own folder.
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True, timeout=60
        ).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if "_HERE_=" in line:
            return os.path.dirname(line.split("_HERE_=", 1)[1].strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


# -g0 drops the debug info that Python's CFLAGS ask for: with torch's headers it
# doubles the object size and slows each compile noticeably. -fno-trapping-math
# lets GCC if-convert the clamps and selects of the CPU kernels' inner loops so
# they vectorise; it changes no result, only whether FP exceptions may trap.
CXX_FLAGS = ["-O3", "-fopenmp", "-g0", "-fno-trapping-math"]


def _extensions():
    cpp = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cu = sorted(glob.glob("csrc/cuda/*.cu"))
    if not cpp:
        return [], {}
    from torch.utils import cpp_extension

    with_cuda = os.environ.get("FASTMLR_WITH_CUDA", "1") != "0" and bool(cu)
    cuda_home = _find_cuda_home() if with_cuda else None
    if with_cuda and cuda_home and os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;8.6;8.9;9.0")
        ext = cpp_extension.CUDAExtension(
            "fastmlr._C",
            cpp + cu,
            include_dirs=[os.path.join(HERE, "csrc")],
            define_macros=[("FASTMLR_WITH_CUDA", "1")],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", "--use_fast_math"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        if with_cuda:
            print("fastmlr: no CUDA toolkit found; building the CPU-only extension")
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
