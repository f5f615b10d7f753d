// What the GEMM kernel (gemm.h) and the cells' row reductions (cells.h) share: 64-byte GCC
// vector types, whatever the ISA the including loop is compiled for.
#pragma once

#include <cstring>

#ifndef FASTRNN_INLINE
#define FASTRNN_INLINE inline __attribute__((always_inline))
#endif

namespace fastrnn {

template <typename T> struct Vec64;
template <> struct Vec64<float> { typedef float type __attribute__((vector_size(64))); };
template <> struct Vec64<double> { typedef double type __attribute__((vector_size(64))); };

template <typename T>
FASTRNN_INLINE typename Vec64<T>::type vload(const T* p) {
  typename Vec64<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
FASTRNN_INLINE void vstore(T* p, typename Vec64<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

}  // namespace fastrnn
