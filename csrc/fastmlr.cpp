// fastmlr._C: the schemas of fastmlr's fused ops, in one place.
//
// The kernels register themselves per backend: csrc/cpu/*.cpp (CPU) and
// csrc/cuda/*.cu (CUDA). Fake (meta) kernels and autograd are registered in
// Python, fastmlr/ops/_cpp.py. What each op computes: docs/srdl.md and
// fastmlr/ops/reference.py.
//
// Built twice: as the Python extension fastmlr._C (setup.py), and with
// FASTMLR_OPS_NO_PYTHON as the plain shared library libfastmlr_ops that
// export/cpp links into C++ programs (no Python symbols).
#ifndef FASTMLR_OPS_NO_PYTHON
#include <Python.h>
#endif
#include <torch/library.h>

#include "cpu/car_simd.h"
#include "cpu/parallel.h"

#ifndef FASTMLR_OPS_NO_PYTHON
namespace {
// _set_sleeping_pool(on: bool) -> bool: whether the calling thread's kernels run their loops on fastmlr's
// sleeping pool (csrc/cpu/parallel.h); returns the previous setting. Used by fastmlr.ops.sleeping_threads().
PyObject* set_sleeping_pool(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  return PyBool_FromLong(fastmlr::cpu::set_sleeping_pool(on != 0));
}

PyMethodDef methods[] = {
    {"_set_sleeping_pool", set_sleeping_pool, METH_O,
     "_set_sleeping_pool(on) -> bool: this thread's CPU kernels on fastmlr's sleeping pool (True) or ATen's (False); "
     "returns the previous setting."},
    {nullptr, nullptr, 0, nullptr},
};
}  // namespace

extern "C" {
// `import fastmlr._C` only has to load this library so that the static
// TORCH_LIBRARY initialisers below and in the kernel files run.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "fastmlr's C++/CUDA ops; use them through fastmlr.ops or torch.ops.fastmlr.",
      -1,    // size of per-interpreter state
      methods,
  };
  PyObject* module = PyModule_Create(&module_def);
#ifdef FASTMLR_WITH_CUDA
  constexpr long kWithCuda = 1;
#else
  constexpr long kWithCuda = 0;
#endif
  // Lets tests tell "built without CUDA" from "CUDA kernels failed to register", and which float32 CPU
  // kernels this process runs (csrc/cpu/car_simd.h: avx512, avx2 or default).
  if (module != nullptr && (PyModule_AddIntConstant(module, "with_cuda", kWithCuda) != 0 ||
                            PyModule_AddStringConstant(module, "cpu_capability",
                                                       fastmlr::cpu_isa_name(fastmlr::cpu_isa())) != 0)) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
#endif

TORCH_LIBRARY(fastmlr, m) {
  // SRDL eq. 5: SA[n,c,p] = sigmoid(b + sum_k s[k] tanh(u[n,p,k] wc[c,k])).
  // u [N, P, D], wc [C, D], s [D], b [] -> [N, C, P].
  m.def("car_spatial_attention(Tensor u, Tensor wc, Tensor s, Tensor b) -> Tensor");
  // Gradients (du, dwc, ds, db) from grad [N, C, P] and the forward's output;
  // tanh is recomputed, nothing of size N x C x P x D is kept or made.
  m.def(
      "car_spatial_attention_backward(Tensor grad, Tensor u, Tensor wc, Tensor s, Tensor b, Tensor out)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  // SRDL eq. 6 + GMP: feat[n,c,k] = max_p 0.5 f[n,k,p] (sa[n,c,p] + ca[n,c,k]).
  // f [N, D, P], sa [N, C, P], ca [N, C, D] -> (feat [N, C, D], idx int64
  // [N, C, D]): idx is the first p reaching the maximum, all the backward needs.
  // index=False (no gradient wanted): idx is empty ([0, C, D]) and the kernel
  // need not track the positions (the CPU's float32 kernels then keep values alone).
  m.def("car_pool(Tensor f, Tensor sa, Tensor ca, bool index=True) -> (Tensor, Tensor)");
  m.def("car_pool_backward(Tensor grad, Tensor f, Tensor sa, Tensor ca, Tensor idx) -> (Tensor, Tensor, Tensor)");
  // SRDL eq. 7-10: sa [N, K, H, W] -> int64 [N, K, 4] inclusive (x0, x1, y0, y1),
  // x along W; -1 rows for flat maps.
  m.def("oe_boxes(Tensor sa, float alpha) -> Tensor");
  // sa with each box set to 0; also its own backward (applied to the gradient).
  m.def("oe_erase(Tensor sa, Tensor boxes) -> Tensor");
  // The CPU kernels' float32 tanh (car_math.h tanh_fast), elementwise over a
  // float32 CPU tensor: what tests measure its error bound on.
  m.def("tanh_fast(Tensor x) -> Tensor");
}
