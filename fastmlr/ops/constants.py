"""Numbers that are part of the ops' definitions, shared by every implementation.

Kept apart from :mod:`fastmlr.ops.reference` so the kernels (fastmlr.kernels) and the
reference both read them without one importing the other. The C++ kernels hold the same
value in csrc/car_math.h.
"""

# A marginal whose max - min is at most this is "flat": no obvious object (oe_boxes).
FLAT_EPS = 1e-6
