// Coefficients of tanh_fast (csrc/car_math.h), shared by the scalar definition there and the
// explicit AVX-512 / AVX2 kernels (csrc/cpu/car_simd_rows.h), so that both evaluate the same
// rational function in the same order. constexpr: internal linkage, safe to include anywhere.
#pragma once

namespace fastmlr {
namespace tanh_coeffs {
constexpr float kClamp = 9.0f;
// numerator x (1 + p1 z + p2 z^2 + p3 z^3 + p4 z^4), highest degree first: kP[0] = p4
constexpr float kP[4] = {1.3339418458713226e-08f, 2.0597106413333677e-05f, 3.4948219545185566e-03f,
                         1.3380371034145355e-01f};
// denominator 1 + q1 z + ... + q4 z^4, highest degree first
constexpr float kQ[4] = {7.770027536935231e-07f, 3.2844077213667333e-04f, 2.587403543293476e-02f,
                         4.671368896961212e-01f};
}  // namespace tanh_coeffs
}  // namespace fastmlr
