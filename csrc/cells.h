// Cell math of the C++ backend: the only place it is written. One struct per cell holds its
// forward and backward pointwise math on one batch row, over contiguous hidden units, with
// independent iterations so the compiler vectorises them, plus the few facts the time loop
// (recurrence.h) needs. Everything here is always inlined into the loop's per-ISA instances.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "vec.h"

namespace fastrnn {

// float activations, written without calls or branches so the cell loops vectorise in every
// ISA instance, and accurate to a few ulp in RELATIVE error over the whole float range (near 0,
// subnormal results, +-inf; NaN propagates). Over all 2^32 floats against double libm:
// sigmoid 2.40 ulp, tanh 2.50 ulp at most (csrc/tools/activation_sweep.cpp, per ISA clone).
FASTRNN_INLINE uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
FASTRNN_INLINE float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// e^r - 1 for a = n*ln2 + r (|r| <= ln2/2); a must lie in [-104, 0] or be NaN. Returns the
// polynomial and n in two's complement (unsigned, so every operation on it is defined, NaN
// included). n comes from the float itself: adding 1.5*2^23 rounds a*log2(e) to an integer
// that lands in the low mantissa bits, with no float-to-int conversion (undefined for NaN).
// Cody-Waite: n*0.693359375 is exact (9 significant bits), the low part carries the rest of ln2.
// e^r - 1 = r + r^2 q(r): q is a degree-5 fit to (e^r - 1 - r)/r^2 on [-0.3468, 0.3468]
// (weighted least squares iterated to equal ripple; max |error| 1.4e-9, 4.3e-9 with the
// coefficients rounded to float), so the result keeps r's relative accuracy as r -> 0.
FASTRNN_INLINE float expm1_reduced(float a, uint32_t& n) {
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  const float t = a * 1.44269504088896341f + shifter;
  const float k = t - shifter;
  n = float_bits(t) - float_bits(shifter);
  float r = a - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float q = 1.990763994e-4f;
  q = q * r + 1.393368817e-3f;
  q = q * r + 8.333286270e-3f;
  q = q * r + 4.166646302e-2f;
  q = q * r + 1.666666716e-1f;
  q = q * r + 5.0e-1f;
  return r + (r * r) * q;
}

// e^a for a <= 0 (NaN passes). Below -104 the result is 0 in float anyway. 2^n is applied as
// 2^(n+64) (a normal number for n >= -150) times 2^-64, so subnormal results come out right
// instead of flushing at 2^-126.
FASTRNN_INLINE float exp_nonpositive(float a) {
  a = a < -104.0f ? -104.0f : a;
  uint32_t n;
  const float p = expm1_reduced(a, n);
  const float s = bits_float((n + 127u + 64u) << 23);
  return (s * p + s) * 5.42101086e-20f;  // 2^-64
}

template <typename T> FASTRNN_INLINE T sigmoid(T x);
// q = e/(1+e) with e = e^-|x| <= 1: sigmoid is q for x < 0 (nothing cancels; the tail keeps
// its relative accuracy down to subnormals) and 1 - q for x >= 0: one rounding of 1 minus an
// accurate small term, 0.61 ulp at most for 3 <= x < 12 (1/(1+e) there: about 1 ulp). The
// backward's 1 - sigmoid cancels near saturation and multiplies that error.
template <> FASTRNN_INLINE float sigmoid<float>(float x) {
  const float e = exp_nonpositive(-std::fabs(x));
  const float q = e / (1.0f + e);
  return x >= 0.0f ? 1.0f - q : q;
}
// float64: the same constructions with a double reduction and a longer series. std::exp and
// std::tanh are calls the compiler cannot vectorise: a float64 cell's pointwise math cost
// ~15 ns an element that way, more than its products at time_sequence_prediction's size
// (B=97, H=51), where torch.nn's vectorised activations made it 1.4x faster than fastrnn.
FASTRNN_INLINE uint64_t double_bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
FASTRNN_INLINE double bits_double(uint64_t u) {
  double x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// e^r - 1 for a = n*ln2 + r (|r| <= ln2/2), a in [-746, 0] or NaN; n as in expm1_reduced.
// ln2's high part has 32 significant bits, so n*hi is exact for every n here. The series
// r + r^2 (1/2! + r/3! + ... + r^11/13!) stops where the next term is below 4e-18 of r.
FASTRNN_INLINE double expm1_reduced(double a, uint64_t& n) {
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double t = a * 1.4426950408889634074 + shifter;
  const double k = t - shifter;
  n = double_bits(t) - double_bits(shifter);
  double r = a - k * 6.93147180369123816490e-01;
  r = r - k * 1.90821492927058770002e-10;
  double q = 1.0 / 6227020800.0;  // 1/13!
  q = q * r + 1.0 / 479001600.0;
  q = q * r + 1.0 / 39916800.0;
  q = q * r + 1.0 / 3628800.0;
  q = q * r + 1.0 / 362880.0;
  q = q * r + 1.0 / 40320.0;
  q = q * r + 1.0 / 5040.0;
  q = q * r + 1.0 / 720.0;
  q = q * r + 1.0 / 120.0;
  q = q * r + 1.0 / 24.0;
  q = q * r + 1.0 / 6.0;
  q = q * r + 0.5;
  return r + (r * r) * q;
}

// e^a for a <= 0; below -746 the result rounds to 0. 2^n as 2^(n+128) * 2^-128 for subnormals.
FASTRNN_INLINE double exp_nonpositive(double a) {
  a = a < -746.0 ? -746.0 : a;
  uint64_t n;
  const double p = expm1_reduced(a, n);
  const double s = bits_double((n + 1023u + 128u) << 52);
  return (s * p + s) * 2.9387358770557187699e-39;  // 2^-128
}

template <> FASTRNN_INLINE double sigmoid<double>(double x) {
  const double e = exp_nonpositive(-std::fabs(x));
  const double q = e / (1.0 + e);
  return x >= 0.0 ? 1.0 - q : q;
}

// |x| < 0.5: |x| + |x|^3 P(x^2), P a degree-4 fit to (tanh(x) - x)/x^3 (weighted least squares
// iterated to equal ripple in tanh's relative error: 3.5e-10, 4.2e-9 with float coefficients).
// Its correction is under 8% of x, so the result is x rounded plus a small term: 0.68 ulp at
// most (torch's tanh: 0.5), where the formula below reached 1.4 ulp and 2*sigmoid(2x)-1 was not
// relatively accurate at all.
// For 0.5 <= |x| < 1, tanh|x| = -u/(2+u) with u = e^(-2|x|) - 1 in (-1, 0] (2.3 ulp: three
// roundings of similar size). From |x| = 1, tanh|x| = 1 - 2e/(1+e) with e = e^(-2|x|): one
// rounding of 1 minus an accurate term of at most 0.24, 1.03 ulp on [1, 3) and 0.51 on
// [3, 12), as libm's float tanh. Near saturation that is what counts: the backward takes
// tanh' = 1 - y^2 from the output y, which multiplies y's error by 1/(1 - y^2); at 2.5 ulp
// there PyTorch's module samples (inputs up to 9) missed the 2e-5 bound against torch.nn.
// Both ranges share one division (numerator and denominator are selected), the polynomial
// is selected below 0.5, so the loop stays branch-free. Beyond |x| = 10 the float result is
// 1 (the clamp also keeps 2^n normal).
template <typename T> FASTRNN_INLINE T tanh_(T x);
template <> FASTRNN_INLINE float tanh_<float>(float x) {
  const float ax = std::fabs(x);
  const float y = x * x;
  float q = -6.647487171e-03f;
  q = q * y + 2.129799128e-02f;
  q = q * y + -5.389919132e-02f;
  q = q * y + 1.333296448e-01f;
  q = q * y + -3.333332837e-01f;
  const float small = ax + (ax * y) * q;
  float a = -2.0f * ax;
  a = a < -20.0f ? -20.0f : a;
  uint32_t n;
  const float p = expm1_reduced(a, n);
  const float s = bits_float((n + 127u) << 23);
  const float u = s * p + (s - 1.0f);  // e^(-2|x|) - 1
  const float e = s * p + s;           // e^(-2|x|)
  const bool mid = ax < 1.0f;
  const float d = (mid ? -u : e + e) / (mid ? 2.0f + u : 1.0f + e);
  return std::copysign(ax < 0.5f ? small : (mid ? d : 1.0f - d), x);
}
// float64: tanh|x| = -u/(2+u) with u = e^(-2|x|) - 1 over the whole range (a few ulp, far
// inside float64's 1e-9 parity bound; there is no cancellation: 2 + u >= 1). From |x| = 20
// the double result is 1 (the clamp keeps 2^n normal).
template <> FASTRNN_INLINE double tanh_<double>(double x) {
  double a = -2.0 * std::fabs(x);
  a = a < -40.0 ? -40.0 : a;
  uint64_t n;
  const double p = expm1_reduced(a, n);
  const double s = bits_double((n + 1023u) << 52);
  const double u = s * p + (s - 1.0);
  return std::copysign(-u / (2.0 + u), x);
}

// ---------------------------------------------------------------------------------------
// Row reductions (LayerNorm statistics). Without reassociation the compiler keeps a plain
// sum scalar, one add latency per element; these sum in 64-byte vectors, two of them in
// flight, then across lanes in a fixed order. The vector type is the same in every ISA
// instance (the compiler splits it into the registers it has), so a sum is the same number
// whichever instance runs.
// ---------------------------------------------------------------------------------------
// the terms below are lambdas: forced inline like everything here, so they are compiled for
// the ISA of the loop that uses them
#define FASTRNN_LAMBDA_INLINE __attribute__((always_inline))

// sum over j < n of term(j), the term given twice: vterm(j) is terms j..j+VN-1 as one vector,
// sterm(j) term j alone (the tail past the last full vector)
template <typename T, class VTerm, class STerm>
FASTRNN_INLINE T row_sum(int64_t n, VTerm vterm, STerm sterm) {
  typedef typename Vec64<T>::type V;
  constexpr int64_t VN = sizeof(V) / sizeof(T);
  V acc0 = V{}, acc1 = V{};
  int64_t j = 0;
  for (; j + 2 * VN <= n; j += 2 * VN) {
    acc0 += vterm(j);
    acc1 += vterm(j + VN);
  }
  if (j + VN <= n) {
    acc0 += vterm(j);
    j += VN;
  }
  acc0 += acc1;
  T tail = T(0);
  for (; j < n; ++j) tail += sterm(j);
  T s = T(0);
  for (int64_t k = 0; k < VN; ++k) s += acc0[k];
  return s + tail;
}

// sum x[j]
template <typename T>
FASTRNN_INLINE T sum_of(int64_t n, const T* __restrict x) {
  return row_sum<T>(
      n, [&](int64_t j) FASTRNN_LAMBDA_INLINE { return vload<T>(x + j); },
      [&](int64_t j) FASTRNN_LAMBDA_INLINE { return x[j]; });
}
// sum (x[j] - mu)^2: the variance's second pass (summing squares of deviations, not
// x^2 - mu^2, which cancels when |mu| is large against the spread)
template <typename T>
FASTRNN_INLINE T sum_sq_dev(int64_t n, const T* __restrict x, T mu) {
  return row_sum<T>(
      n,
      [&](int64_t j) FASTRNN_LAMBDA_INLINE {
        const auto d = vload<T>(x + j) - mu;
        return d * d;
      },
      [&](int64_t j) FASTRNN_LAMBDA_INLINE { return (x[j] - mu) * (x[j] - mu); });
}
// LayerNorm backward's two means, in one pass over the row: with dv = g[j]*w[j] (the gradient
// reaching vhat), m1 = mean dv and m2 = mean dv*vhat[j]
template <typename T>
FASTRNN_INLINE void ln_grad_means(int64_t n, const T* __restrict g, const T* __restrict w, const T* __restrict vhat,
                                  T& m1, T& m2) {
  typedef typename Vec64<T>::type V;
  constexpr int64_t VN = sizeof(V) / sizeof(T);
  V a0 = V{}, a1 = V{}, b0 = V{}, b1 = V{};
  int64_t j = 0;
  for (; j + 2 * VN <= n; j += 2 * VN) {
    const V d0 = vload<T>(g + j) * vload<T>(w + j), d1 = vload<T>(g + j + VN) * vload<T>(w + j + VN);
    a0 += d0;
    a1 += d1;
    b0 += d0 * vload<T>(vhat + j);
    b1 += d1 * vload<T>(vhat + j + VN);
  }
  if (j + VN <= n) {
    const V d0 = vload<T>(g + j) * vload<T>(w + j);
    a0 += d0;
    b0 += d0 * vload<T>(vhat + j);
    j += VN;
  }
  a0 += a1;
  b0 += b1;
  T ta = T(0), tb = T(0);
  for (; j < n; ++j) {
    const T d = g[j] * w[j];
    ta += d;
    tb += d * vhat[j];
  }
  T sa = T(0), sb = T(0);
  for (int64_t k = 0; k < VN; ++k) {
    sa += a0[k];
    sb += b0[k];
  }
  m1 = (sa + ta) / T(n);
  m2 = (sb + tb) / T(n);
}

// ---------------------------------------------------------------------------------------
// Cells. What the loops in recurrence.h read from a cell type (sizes in units of H unless
// said otherwise):
//   Scalar        float or double
//   GATES         width of an x_proj row
//   X_IN_PRODUCT  the x_proj row is added to h_prev @ W_hh^T before the cell (the cell gets the
//                 sum as `pre`); false: `pre` is the product alone and the cell reads x itself
//                 (GRU: the reset gate scales only the recurrent part of n; LayerNorm LSTM:
//                 the product is normalised first). The backward's product operand is then a
//                 separate dgh row, not dx.
//   workspace(H)  width in elements of the per-step row the forward keeps for the backward
//                 (0: none); a function of H, as a row may hold per-row scalars
//   IN_PLACE      the workspace row is also the `pre` row (workspace(H) == GATES*H): the loop
//                 forms x_proj + product in it and the cell overwrites it with its activations.
//                 A separate pre row cost the LSTM one more (B, 4H) stream per step.
//   saved(H)      width in elements of the per-step row the backward reads as `saved` (the
//                 workspace; the Elman RNN reads its output y instead)
//   HAS_C         a second carried state c of width H (LSTM), kept per step as cs
//   H_DIRECT      h_prev also reaches h_t outside the product (GRU's z*h_prev): the backward
//                 writes that part of dh_prev to dh_direct, the product is added to it
//   PROJECTION    the cell may have an output projection h = out @ W_hr^T (the loop applies it)
//   DGH_OUT       the backward returns every step's dgh rows (T, B, GATES*H) instead of
//                 keeping them in scratch (LayerNorm LSTM: dW_hh needs them after the loop,
//                 and recomputing them there cost more than the loop's whole backward)
//   STEP_SUMS     the backward returns STEP_SUMS tensors (T, step_sum(k, H)), each step's row
//                 summed over the step's active batch rows: parameter gradients reduced
//                 while their operands are in cache, in a fixed order (b ascending)
// backward(H, saved, c, c_prev, h_prev, dout, dc, sums, dx, dgh, dh_direct): dout is the
// gradient reaching out; dc the gradient reaching c (in), c_prev (out); sums the step's rows
// of the STEP_SUMS tensors, which the cell adds its row's terms to. Pointers a cell does not
// use may be null.
// Inactive rows (t >= length) are the loop's business, not the cell's.
// forward(H, pre, x, h_prev, c_prev, ws, c, out): out (H) is h, or the input of the projection.
// ---------------------------------------------------------------------------------------

// LSTM, and with PEEPHOLE the peephole LSTM (p = p_i, p_f, p_o, 3H: the cell state feeds the
// gates). gates = ws (4H): i, f, g, o pre-activations in, activations out (IN_PLACE).
//   i = sig(a_i [+ p_i*c_prev]), f = sig(a_f [+ p_f*c_prev]), g = tanh(a_g)
//   c = f*c_prev + i*g,  o = sig(a_o [+ p_o*c]),  out = o*tanh(c)
// Backward, dm = dout:
//   da_o = dm*tanh(c)*o(1-o);  dc_t = dc + dm*o*(1-tanh(c)^2) [+ da_o*p_o]
//   da = [dc_t*g*i(1-i), dc_t*c_prev*f(1-f), dc_t*i*(1-g^2), da_o]
//   dc_prev = dc_t*f [+ da_i*p_i + da_f*p_f]
// Without PEEPHOLE the bracketed terms are not compiled at all: the LSTM's loops are what
// they were before the peephole variant existed.
template <typename T, bool PEEPHOLE>
struct LstmCell {
  using Scalar = T;
  static constexpr int GATES = 4;
  static constexpr bool X_IN_PRODUCT = true, IN_PLACE = true, HAS_C = true, H_DIRECT = false, PROJECTION = true,
                        DGH_OUT = false;
  static constexpr int64_t workspace(int64_t H) { return 4 * H; }
  static constexpr int64_t saved(int64_t H) { return 4 * H; }
  static constexpr int STEP_SUMS = 0;
  static constexpr int64_t step_sum(int, int64_t) { return 0; }
  const T* p;  // (3H) with PEEPHOLE

  FASTRNN_INLINE void forward(int64_t H, const T*, const T*, const T*, const T* __restrict c_prev, T* __restrict gates,
                              T* __restrict c, T* __restrict out) const {
    T* gi = gates;
    T* gf = gates + H;
    T* gg = gates + 2 * H;
    T* go = gates + 3 * H;
    const T* __restrict pp = p;
    for (int64_t j = 0; j < H; ++j) {
      T ai = gi[j], af = gf[j], ao = go[j];
      if constexpr (PEEPHOLE) {
        ai += pp[j] * c_prev[j];
        af += pp[H + j] * c_prev[j];
      }
      T i = sigmoid<T>(ai), f = sigmoid<T>(af), g = tanh_<T>(gg[j]);
      T cj = f * c_prev[j] + i * g;
      if constexpr (PEEPHOLE) ao += pp[2 * H + j] * cj;
      T o = sigmoid<T>(ao);
      gi[j] = i;
      gf[j] = f;
      gg[j] = g;
      go[j] = o;
      c[j] = cj;
      out[j] = o * tanh_<T>(cj);
    }
  }

  FASTRNN_INLINE void backward(int64_t H, const T* __restrict gates, const T* __restrict c, const T* __restrict c_prev,
                               const T*, const T* __restrict dm, T* __restrict dc, T* const*, T* __restrict dgates, T*,
                               T*) const {
    const T* __restrict pp = p;
    for (int64_t j = 0; j < H; ++j) {
      T i = gates[j], f = gates[H + j], g = gates[2 * H + j], o = gates[3 * H + j];
      T tc = tanh_<T>(c[j]);
      T dao = dm[j] * tc * o * (T(1) - o);
      T dct = dc[j] + dm[j] * o * (T(1) - tc * tc);
      if constexpr (PEEPHOLE) dct += dao * pp[2 * H + j];
      T dai = dct * g * i * (T(1) - i);
      T daf = dct * c_prev[j] * f * (T(1) - f);
      dgates[j] = dai;
      dgates[H + j] = daf;
      dgates[2 * H + j] = dct * i * (T(1) - g * g);
      dgates[3 * H + j] = dao;
      T dcp = dct * f;
      if constexpr (PEEPHOLE) dcp += dai * pp[j] + daf * pp[H + j];
      dc[j] = dcp;
    }
  }
};

template <typename T>
using Lstm = LstmCell<T, false>;
template <typename T>
using PeepholeLstm = LstmCell<T, true>;

// LayerNorm LSTM: LN_hh on the recurrent product r = h_prev @ W_hh^T (over its 4H) and LN_c on
// the new cell state (over H); x (4H) is the already normalised input side. pre = r.
//   rhat = (r - mean r)*rstd_r, a = x + rhat*w_r + b_r; i, f, o = sig, g = tanh
//   s = f*c_prev + i*g, shat = (s - mean s)*rstd_s, c = shat*w_c + b_c, out = o*tanh(c)
//   rstd = 1/sqrt(mean((v - mean v)^2) + eps): two passes, as the reference computes it
// ws (9H + 2) = [i, f, g, o | rhat (4H) | shat (H) | rstd_r, rstd_s].
// Backward, dh = dout (LN'(dv) = rstd*(dv - mean dv - vhat*mean(dv*vhat)), means over the row):
//   dc_t = dc + dh*o*(1-tanh(c)^2);  ds = LN_s'(dc_t*w_c)
//   dx = da = [ds*g*i(1-i), ds*c_prev*f(1-f), ds*i*(1-g^2), dh*tanh(c)*o(1-o)]
//   dgh = dr = LN_r'(da*w_r) (returned per step);  dc_prev = ds*f
//   step sums += da*rhat (4H), da (4H), dc_t*shat (H), dc_t (H): the LN gains' and shifts'
//   gradients, per step
// Measured fwd+bwd (fp32, T=100, one thread, AMD EPYC Zen 4, CPU time on a shared machine):
// 1.2-1.26x the LSTM's at B=1 H=64, 1.23-1.38x at B=8 H=128, 1.14-1.18x at B=32 H=256. The
// backward also writes the (T, B, 4H) dgh the LSTM does not have (that took it from ~1.2x to
// ~1.45x the LSTM's backward at B=8 H=128; it saves ops.py recomputing dgh after the loop);
// its other samples sit on the first reads of the saved row (9H + 2 wide against the LSTM's
// 4H), not on the reductions' arithmetic. A software prefetch of the next step's saved rows
// gained nothing measurable.
template <typename T>
struct LayerNormLstm {
  using Scalar = T;
  static constexpr int GATES = 4;
  static constexpr bool X_IN_PRODUCT = false, IN_PLACE = false, HAS_C = true, H_DIRECT = false, PROJECTION = false,
                        DGH_OUT = true;
  static constexpr int64_t workspace(int64_t H) { return 9 * H + 2; }
  static constexpr int64_t saved(int64_t H) { return 9 * H + 2; }
  static constexpr int STEP_SUMS = 4;
  static constexpr int64_t step_sum(int k, int64_t H) { return k < 2 ? 4 * H : H; }
  const T* w_r;  // ln_hh_weight (4H)
  const T* b_r;  // ln_hh_bias (4H) or null
  const T* w_c;  // ln_c_weight (H)
  const T* b_c;  // ln_c_bias (H) or null
  T eps;

  FASTRNN_INLINE void forward(int64_t H, const T* __restrict r, const T* __restrict x, const T*,
                              const T* __restrict c_prev, T* __restrict ws, T* __restrict c, T* __restrict out) const {
    const int64_t G = 4 * H;
    T* __restrict a = ws;  // pre-activations, then activations
    T* __restrict rhat = ws + G;
    T* __restrict shat = ws + 2 * G;
    const T* __restrict wr = w_r;
    const T* __restrict wc = w_c;
    const T mu_r = sum_of<T>(G, r) / T(G);
    const T rstd_r = T(1) / std::sqrt(sum_sq_dev<T>(G, r, mu_r) / T(G) + eps);
    // one loop per shift case: `b ? b[j] : 0` inside one kept GRU's scalar
    if (b_r) {
      const T* __restrict br = b_r;
      for (int64_t j = 0; j < G; ++j) {
        const T rh = (r[j] - mu_r) * rstd_r;
        rhat[j] = rh;
        a[j] = x[j] + (rh * wr[j] + br[j]);
      }
    } else {
      for (int64_t j = 0; j < G; ++j) {
        const T rh = (r[j] - mu_r) * rstd_r;
        rhat[j] = rh;
        a[j] = x[j] + rh * wr[j];
      }
    }
    T* __restrict s = c;  // s before LN_c
    for (int64_t j = 0; j < H; ++j) {
      T i = sigmoid<T>(a[j]), f = sigmoid<T>(a[H + j]), g = tanh_<T>(a[2 * H + j]), o = sigmoid<T>(a[3 * H + j]);
      a[j] = i;
      a[H + j] = f;
      a[2 * H + j] = g;
      a[3 * H + j] = o;
      s[j] = f * c_prev[j] + i * g;
    }
    const T mu_s = sum_of<T>(H, s) / T(H);
    const T rstd_s = T(1) / std::sqrt(sum_sq_dev<T>(H, s, mu_s) / T(H) + eps);
    const T* __restrict o = a + 3 * H;
    if (b_c) {
      const T* __restrict bc = b_c;
      for (int64_t j = 0; j < H; ++j) {
        const T sh = (s[j] - mu_s) * rstd_s;
        const T cj = sh * wc[j] + bc[j];
        shat[j] = sh;
        c[j] = cj;
        out[j] = o[j] * tanh_<T>(cj);
      }
    } else {
      for (int64_t j = 0; j < H; ++j) {
        const T sh = (s[j] - mu_s) * rstd_s;
        const T cj = sh * wc[j];
        shat[j] = sh;
        c[j] = cj;
        out[j] = o[j] * tanh_<T>(cj);
      }
    }
    ws[9 * H] = rstd_r;
    ws[9 * H + 1] = rstd_s;
  }

  FASTRNN_INLINE void backward(int64_t H, const T* __restrict saved, const T* __restrict c, const T* __restrict c_prev,
                               const T*, const T* __restrict dh, T* __restrict dc, T* const* sums, T* __restrict da,
                               T* __restrict dr, T*) const {
    const int64_t G = 4 * H;
    const T* __restrict gates = saved;
    const T* __restrict rhat = saved + G;
    const T* __restrict shat = saved + 2 * G;
    const T rstd_r = saved[9 * H], rstd_s = saved[9 * H + 1];
    const T* __restrict wr = w_r;
    const T* __restrict wc = w_c;
    T* __restrict dct = dr;  // dc_t, in the dr row until dr is written
    for (int64_t j = 0; j < H; ++j) {
      const T o = gates[3 * H + j];
      const T tc = tanh_<T>(c[j]);
      dct[j] = dc[j] + dh[j] * o * (T(1) - tc * tc);
      da[3 * H + j] = dh[j] * tc * o * (T(1) - o);
    }
    // LN_c': means over H of dshat = dc_t*w_c and of dshat*shat
    T m1, m2;
    ln_grad_means<T>(H, dct, wc, shat, m1, m2);
    T* __restrict s_dc_shat = sums[2];
    T* __restrict s_dc = sums[3];
    for (int64_t j = 0; j < H; ++j) {
      const T i = gates[j], f = gates[H + j], g = gates[2 * H + j];
      s_dc_shat[j] += dct[j] * shat[j];
      s_dc[j] += dct[j];
      const T ds = rstd_s * (dct[j] * wc[j] - m1 - shat[j] * m2);
      da[j] = ds * g * i * (T(1) - i);
      da[H + j] = ds * c_prev[j] * f * (T(1) - f);
      da[2 * H + j] = ds * i * (T(1) - g * g);
      dc[j] = ds * f;
    }
    // LN_r': means over 4H of drh = da*w_r and of drh*rhat
    T n1, n2;
    ln_grad_means<T>(G, da, wr, rhat, n1, n2);
    T* __restrict s_da_rhat = sums[0];
    T* __restrict s_da = sums[1];
    for (int64_t j = 0; j < G; ++j) {
      dr[j] = rstd_r * (da[j] * wr[j] - n1 - rhat[j] * n2);
      s_da_rhat[j] += da[j] * rhat[j];
      s_da[j] += da[j];
    }
  }
};

// GRU (torch.nn's: b_hn inside the reset product). x: x_proj row (3H), pre: h_prev @ W_hh^T
// row (3H). ws (4H) = r, z, n, hn.
//   r = sig(x_r + gh_r), z = sig(x_z + gh_z), hn = gh_n + b_hn, n = tanh(x_n + r*hn),
//   h = (1-z)*n + z*h_prev
// Backward, dh = dout: dx (3H) = [dar, daz, dan], dgh (3H) = [dar, daz, dan*r] (the gradient
// of h_prev @ W_hh^T), dh_direct = dh*z.
template <typename T>
struct Gru {
  using Scalar = T;
  static constexpr int GATES = 3;
  static constexpr bool X_IN_PRODUCT = false, IN_PLACE = false, HAS_C = false, H_DIRECT = true, PROJECTION = false,
                        DGH_OUT = false;
  static constexpr int64_t workspace(int64_t H) { return 4 * H; }
  static constexpr int64_t saved(int64_t H) { return 4 * H; }
  static constexpr int STEP_SUMS = 0;
  static constexpr int64_t step_sum(int, int64_t) { return 0; }
  const T* b_hn;  // (H) or null

  template <bool HAS_BHN>
  FASTRNN_INLINE void forward_units(int64_t H, const T* __restrict gh, const T* __restrict x,
                                    const T* __restrict h_prev, T* __restrict acts, T* __restrict h) const {
    const T* __restrict bhn = b_hn;
    for (int64_t j = 0; j < H; ++j) {
      T r = sigmoid<T>(x[j] + gh[j]);
      T z = sigmoid<T>(x[H + j] + gh[H + j]);
      T hn = gh[2 * H + j];
      if (HAS_BHN) hn += bhn[j];
      T n = tanh_<T>(x[2 * H + j] + r * hn);
      acts[j] = r;
      acts[H + j] = z;
      acts[2 * H + j] = n;
      acts[3 * H + j] = hn;
      h[j] = (T(1) - z) * n + z * h_prev[j];
    }
  }

  // One loop per bias case: with `b_hn ? b_hn[j] : 0` inside the loop GCC left it scalar,
  // and the cell cost ~6x the step's product (B=8, H=128); vectorised, GRU forward there
  // went from ~5.2 ms to ~1.2 ms for T=100.
  FASTRNN_INLINE void forward(int64_t H, const T* pre, const T* x, const T* h_prev, const T*, T* ws, T*, T* out) const {
    if (b_hn)
      forward_units<true>(H, pre, x, h_prev, ws, out);
    else
      forward_units<false>(H, pre, x, h_prev, ws, out);
  }

  FASTRNN_INLINE void backward(int64_t H, const T* __restrict acts, const T*, const T*, const T* __restrict h_prev,
                               const T* __restrict dh, T*, T* const*, T* __restrict dx, T* __restrict dgh,
                               T* __restrict dh_direct) const {
    for (int64_t j = 0; j < H; ++j) {
      T r = acts[j], z = acts[H + j], n = acts[2 * H + j], hn = acts[3 * H + j];
      T dan = dh[j] * (T(1) - z) * (T(1) - n * n);
      T dar = dan * hn * r * (T(1) - r);
      T daz = dh[j] * (h_prev[j] - n) * z * (T(1) - z);
      dx[j] = dar;
      dx[H + j] = daz;
      dx[2 * H + j] = dan;
      dgh[j] = dar;
      dgh[H + j] = daz;
      dgh[2 * H + j] = dan * r;
      dh_direct[j] = dh[j] * z;
    }
  }
};

// Elman RNN: h = act(pre). The backward takes act'(.) from the output h (saved = y).
template <typename T, bool RELU>
struct Rnn {
  using Scalar = T;
  static constexpr int GATES = 1;
  static constexpr bool X_IN_PRODUCT = true, IN_PLACE = false, HAS_C = false, H_DIRECT = false, PROJECTION = false,
                        DGH_OUT = false;
  static constexpr int64_t workspace(int64_t) { return 0; }
  static constexpr int64_t saved(int64_t H) { return H; }
  static constexpr int STEP_SUMS = 0;
  static constexpr int64_t step_sum(int, int64_t) { return 0; }

  FASTRNN_INLINE void forward(int64_t H, const T* __restrict a, const T*, const T*, const T*, T*, T*,
                              T* __restrict h) const {
    if (RELU) {
      for (int64_t j = 0; j < H; ++j) h[j] = a[j] > T(0) ? a[j] : T(0);
    } else {
      for (int64_t j = 0; j < H; ++j) h[j] = tanh_<T>(a[j]);
    }
  }

  FASTRNN_INLINE void backward(int64_t H, const T* __restrict h, const T*, const T*, const T*, const T* __restrict dh,
                               T*, T* const*, T* __restrict da, T*, T*) const {
    if (RELU) {
      for (int64_t j = 0; j < H; ++j) da[j] = h[j] > T(0) ? dh[j] : T(0);
    } else {
      for (int64_t j = 0; j < H; ++j) da[j] = dh[j] * (T(1) - h[j] * h[j]);
    }
  }
};

}  // namespace fastrnn
