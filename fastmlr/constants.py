"""Numbers the kernels and the ops' declarations share: importing this module imports nothing (no triton, no torch).

Both fastmlr.kernels (the Triton launchers and TensorRT entries) and fastmlr.ops
(the references, the TensorRT plugin contracts in the op declarations) read these,
so fastmlr.kernels never imports fastmlr.ops, and importing fastmlr.ops loads no
kernel module. The C++ kernels hold the same
epsilons in csrc/car_math.h.
"""

# The domain and version of the fused ONNX nodes (ONNX graphs, TensorRT plugin namespace, the fused runner).
FUSED_DOMAIN = "fastmlr"
FUSED_VERSION = 1
# MMDSR's multi-perspective cosine: each norm is clamped below at this (reference, decomposition, Triton,
# TensorRT).
COSINE_EPS = 1e-8
# SRDL's object-erasing boxes: a marginal whose max - min is at most this is "flat": no obvious object.
FLAT_EPS = 1e-6
# Object-erasing boxes: one Triton program holds a whole H x W map and compares every pair of positions of a
# marginal (L x L with L = next_pow2(side)); beyond this side that no longer fits a program's
# registers. SRDL's maps are 14 x 14.
MAX_OE_SIDE = 128

# GPU configs of SRDL's spatial attention (its tanh reductions), as (block sizes, num_warps). The work is one
# tanh per (c, p, k), so the 3-D tile (BLOCK_C x BLOCK_P x BLOCK_K) is kept at 4-8K elements; which
# shape wins depends on C, P, D. Each compiles for sm_90 to <= 128 registers a thread without spills
# (ptxas -v, fp32), forward and du. The launcher autotunes over them; a TensorRT plugin takes the first.
SA_GPU_CONFIGS = (
    (dict(BLOCK_C=16, BLOCK_P=32, BLOCK_K=16), 4),
    (dict(BLOCK_C=32, BLOCK_P=32, BLOCK_K=8), 4),
    (dict(BLOCK_C=16, BLOCK_P=64, BLOCK_K=8), 4),
    (dict(BLOCK_C=32, BLOCK_P=64, BLOCK_K=8), 8),
    (dict(BLOCK_C=32, BLOCK_P=32, BLOCK_K=16), 8),
)
# SRDL's category pooling is bound by loads of f (along P) and ca (along D): one config. The running max with its
# position doubles the tile's registers; 16 x 32 x 8 compiles to 128 registers on sm_90 (16 x 32 x 16: 232).
POOL_GPU = dict(BLOCK_C=16, BLOCK_K=32, BLOCK_P=8, num_warps=4)
