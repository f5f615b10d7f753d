// Cell math of the C++ backend: the only place it is written. Every function works on one
// batch row, over contiguous hidden units, with independent iterations so the compiler
// vectorises them (float loops are compiled per ISA through target_clones in fastrnn.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#define FASTRNN_INLINE inline __attribute__((always_inline))

namespace fastrnn {

// exp(x) for float, written without calls or branches so loops over it vectorise:
// Cody-Waite reduction x = n*ln2 + r, a degree-6 polynomial for e^r (about 2 ulp over the
// clamped range), and 2^n assembled in the exponent bits. The clamps keep 2^n a normal
// number; a NaN passes through both comparisons and yields NaN.
FASTRNN_INLINE float exp_approx(float x) {
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.3f ? -87.3f : x;
  float fx = x * 1.44269504088896341f;
  int32_t n = static_cast<int32_t>(fx + (fx >= 0.0f ? 0.5f : -0.5f));
  float nf = static_cast<float>(n);
  float r = x - nf * 0.693359375f;
  r = r + nf * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return y * scale;
}

template <typename T> FASTRNN_INLINE T sigmoid(T x);
template <> FASTRNN_INLINE float sigmoid<float>(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
template <> FASTRNN_INLINE double sigmoid<double>(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// tanh(x) = 2*sigmoid(2x) - 1 for float: absolute error ~1e-7 (the contract is relative RMS
// over a tensor, where this is invisible); float64 uses libm for the 1e-9 bound.
template <typename T> FASTRNN_INLINE T tanh_(T x);
template <> FASTRNN_INLINE float tanh_<float>(float x) { return 2.0f * sigmoid<float>(2.0f * x) - 1.0f; }
template <> FASTRNN_INLINE double tanh_<double>(double x) { return std::tanh(x); }

// ---------------------------------------------------------------------------------------
// LSTM. gates row (4H): i, f, g, o pre-activations in, activations out.
//   c = f*c_prev + i*g,  m = o*tanh(c)   (m is h, or h before the projection)
// ---------------------------------------------------------------------------------------
template <typename T>
FASTRNN_INLINE void lstm_fwd_row(int64_t H, T* __restrict gates, const T* __restrict c_prev,
                                 T* __restrict c, T* __restrict m) {
  T* gi = gates;
  T* gf = gates + H;
  T* gg = gates + 2 * H;
  T* go = gates + 3 * H;
  for (int64_t j = 0; j < H; ++j) {
    T i = sigmoid<T>(gi[j]), f = sigmoid<T>(gf[j]), g = tanh_<T>(gg[j]), o = sigmoid<T>(go[j]);
    T cj = f * c_prev[j] + i * g;
    gi[j] = i; gf[j] = f; gg[j] = g; go[j] = o;
    c[j] = cj;
    m[j] = o * tanh_<T>(cj);
  }
}

// dm: gradient reaching m; dc: gradient reaching c (in), reaching c_prev (out).
//   dc_t = dc + dm*o*(1-tanh(c)^2); dgates = [dc_t*g*i(1-i), dc_t*c_prev*f(1-f),
//   dc_t*i*(1-g^2), dm*tanh(c)*o(1-o)];  dc_prev = dc_t*f
template <typename T>
FASTRNN_INLINE void lstm_bwd_row(int64_t H, const T* __restrict gates, const T* __restrict c,
                                 const T* __restrict c_prev, const T* __restrict dm,
                                 T* __restrict dc, T* __restrict dgates) {
  for (int64_t j = 0; j < H; ++j) {
    T i = gates[j], f = gates[H + j], g = gates[2 * H + j], o = gates[3 * H + j];
    T tc = tanh_<T>(c[j]);
    T dct = dc[j] + dm[j] * o * (T(1) - tc * tc);
    dgates[j] = dct * g * i * (T(1) - i);
    dgates[H + j] = dct * c_prev[j] * f * (T(1) - f);
    dgates[2 * H + j] = dct * i * (T(1) - g * g);
    dgates[3 * H + j] = dm[j] * tc * o * (T(1) - o);
    dc[j] = dct * f;
  }
}

// ---------------------------------------------------------------------------------------
// GRU (torch.nn's: b_hn inside the reset product). x: x_proj row (3H), gh: h_prev @ W_hh^T
// row (3H). Writes acts (4H) = r, z, n, hn and h.
// ---------------------------------------------------------------------------------------
template <typename T, bool HAS_BHN>
FASTRNN_INLINE void gru_fwd_units(int64_t H, const T* __restrict x, const T* __restrict gh,
                                  const T* __restrict b_hn, const T* __restrict h_prev,
                                  T* __restrict acts, T* __restrict h) {
  for (int64_t j = 0; j < H; ++j) {
    T r = sigmoid<T>(x[j] + gh[j]);
    T z = sigmoid<T>(x[H + j] + gh[H + j]);
    T hn = gh[2 * H + j];
    if (HAS_BHN) hn += b_hn[j];
    T n = tanh_<T>(x[2 * H + j] + r * hn);
    acts[j] = r; acts[H + j] = z; acts[2 * H + j] = n; acts[3 * H + j] = hn;
    h[j] = (T(1) - z) * n + z * h_prev[j];
  }
}

// One loop per bias case: with `b_hn ? b_hn[j] : 0` inside the loop GCC left it scalar,
// and the cell cost ~6x the step's product (B=8, H=128); vectorised, GRU forward there
// went from ~5.2 ms to ~1.2 ms for T=100.
template <typename T>
FASTRNN_INLINE void gru_fwd_row(int64_t H, const T* x, const T* gh, const T* b_hn, const T* h_prev, T* acts,
                                T* h) {
  if (b_hn) gru_fwd_units<T, true>(H, x, gh, b_hn, h_prev, acts, h);
  else gru_fwd_units<T, false>(H, x, gh, b_hn, h_prev, acts, h);
}

// dh: gradient reaching h_t. Writes dx (3H) = [dar, daz, dan], dgh (3H) = [dar, daz, dan*r]
// (the gradient of h_prev @ W_hh^T) and dh_direct = dh*z.
template <typename T>
FASTRNN_INLINE void gru_bwd_row(int64_t H, const T* __restrict acts, const T* __restrict h_prev,
                                const T* __restrict dh, T* __restrict dx, T* __restrict dgh,
                                T* __restrict dh_direct) {
  for (int64_t j = 0; j < H; ++j) {
    T r = acts[j], z = acts[H + j], n = acts[2 * H + j], hn = acts[3 * H + j];
    T dan = dh[j] * (T(1) - z) * (T(1) - n * n);
    T dar = dan * hn * r * (T(1) - r);
    T daz = dh[j] * (h_prev[j] - n) * z * (T(1) - z);
    dx[j] = dar; dx[H + j] = daz; dx[2 * H + j] = dan;
    dgh[j] = dar; dgh[H + j] = daz; dgh[2 * H + j] = dan * r;
    dh_direct[j] = dh[j] * z;
  }
}

// ---------------------------------------------------------------------------------------
// Elman RNN. a: pre-activation row in, h out. Backward uses act'(.) from the output.
// ---------------------------------------------------------------------------------------
template <typename T>
FASTRNN_INLINE void rnn_fwd_row(int64_t H, bool relu, const T* __restrict a, T* __restrict h) {
  if (relu) {
    for (int64_t j = 0; j < H; ++j) h[j] = a[j] > T(0) ? a[j] : T(0);
  } else {
    for (int64_t j = 0; j < H; ++j) h[j] = tanh_<T>(a[j]);
  }
}

template <typename T>
FASTRNN_INLINE void rnn_bwd_row(int64_t H, bool relu, const T* __restrict h, const T* __restrict dh,
                                T* __restrict da) {
  if (relu) {
    for (int64_t j = 0; j < H; ++j) da[j] = h[j] > T(0) ? dh[j] : T(0);
  } else {
    for (int64_t j = 0; j < H; ++j) da[j] = dh[j] * (T(1) - h[j] * h[j]);
  }
}

}  // namespace fastrnn
