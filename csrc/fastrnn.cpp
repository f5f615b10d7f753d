// fastrnn C++ CPU backend: whole-sequence LSTM / GRU / RNN recurrences, forward and backward.
//
// The time loop runs here, with every buffer allocated once per call. Per step, the
// recurrent product h @ W_hh^T goes through a register-blocked kernel written for small
// matrices (where a dispatched GEMM costs more in overhead than in arithmetic) or through
// torch's BLAS for large ones (see use_blas). The pointwise cell is fused per batch row
// (cells.h). Backward runs reverse time for dgates and dh/dc only; dW_hh is one GEMM over all
// T*B rows after the loop. Nothing depends on thread timing: results are bitwise
// reproducible run to run.
#include <torch/extension.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "cells.h"

namespace fastrnn {
namespace {

// Every buffer a kernel writes comes from fresh(): NaN-filled when the test harness asks
// (fastrnn._cpp sets this from FASTRNN_POISON), so an element a kernel forgets to write, or
// reads before writing, fails the parity checks instead of passing by luck.
bool g_poison = false;

at::Tensor fresh(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (g_poison) return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), options);
  return at::empty(sizes, options);
}

// Float hot loops are compiled for AVX-512, AVX2+FMA and baseline x86-64 and picked at load
// time, so the default build stays portable (no -march=native).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTRNN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTRNN_CLONES
#endif

// ---------------------------------------------------------------------------------------
// C[m, :] += A[m, :] @ W  (A: M x K, row stride lda; W: K x N row-major, ldw; C: ldc).
// The product is summed from zero and added to C once: accumulating into C (which holds the
// input projection and biases) rounded every small product at C's magnitude, and with inputs
// and weights at 1e-6 scale that made an Elman RNN's output ~1 ulp RMS off instead of ~0.3.
// An RB x (CV * 64 bytes) block of C is held in vector registers across the whole K loop
// (written with GCC vector types: with plain arrays GCC kept the accumulators on the stack
// and did a load-FMA-store per k); W rows stream from cache. The block shape is chosen per
// ISA so the accumulators fit the register file (AVX-512: 32 zmm, AVX2: 16 ymm, SSE: 16 xmm).
// ---------------------------------------------------------------------------------------
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
FASTRNN_INLINE void vstore(T* p, typename Vec64<T>::type v) { std::memcpy(p, &v, sizeof(v)); }

// RB rows x CV vectors of C, accumulated over all K.
template <typename T, int RB, int CV>
FASTRNN_INLINE void gemm_block(int64_t K, const T* A, int64_t lda, const T* W, int64_t ldw, T* C,
                               int64_t ldc) {
  typedef typename Vec64<T>::type V;
  constexpr int VN = sizeof(V) / sizeof(T);
  V acc[RB][CV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < CV; ++v) acc[r][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V w[CV];
    for (int v = 0; v < CV; ++v) w[v] = vload<T>(W + k * ldw + v * VN);
    for (int r = 0; r < RB; ++r) {
      const T a = A[r * lda + k];
      for (int v = 0; v < CV; ++v) acc[r][v] += a * w[v];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < CV; ++v) vstore<T>(C + r * ldc + v * VN, vload<T>(C + r * ldc + v * VN) + acc[r][v]);
}

// One row of C (a matrix-vector step, B = 1): a single chain of FMAs per accumulator would
// wait on FMA latency every k, so CV column vectors and KS partial sums over k run in parallel
// and are added at the end (a fixed order: results stay reproducible).
template <typename T, int CV, int KS>
FASTRNN_INLINE void gemm_row(int64_t K, const T* a, const T* W, int64_t ldw, T* c) {
  typedef typename Vec64<T>::type V;
  constexpr int VN = sizeof(V) / sizeof(T);
  V acc[KS][CV];
  for (int s = 0; s < KS; ++s)
    for (int v = 0; v < CV; ++v) acc[s][v] = V{};
  int64_t k = 0;
  for (; k + KS <= K; k += KS)
    for (int s = 0; s < KS; ++s) {
      const T x = a[k + s];
      for (int v = 0; v < CV; ++v) acc[s][v] += x * vload<T>(W + (k + s) * ldw + v * VN);
    }
  for (; k < K; ++k)
    for (int v = 0; v < CV; ++v) acc[0][v] += a[k] * vload<T>(W + k * ldw + v * VN);
  for (int s = 1; s < KS; ++s)
    for (int v = 0; v < CV; ++v) acc[0][v] += acc[s][v];
  for (int v = 0; v < CV; ++v) vstore<T>(c + v * VN, vload<T>(c + v * VN) + acc[0][v]);
}

// Columns past the last full vector: plain loops (few, and the compiler vectorises them).
template <typename T>
FASTRNN_INLINE void gemm_cols_tail(int64_t rows, int64_t K, int64_t n0, int64_t N, const T* A,
                                   int64_t lda, const T* W, int64_t ldw, T* C, int64_t ldc) {
  T sum[64 / sizeof(T)];  // fewer columns than one vector
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = n0; j < N; ++j) sum[j - n0] = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const T a = A[r * lda + k];
      for (int64_t j = n0; j < N; ++j) sum[j - n0] += a * W[k * ldw + j];
    }
    for (int64_t j = n0; j < N; ++j) C[r * ldc + j] += sum[j - n0];
  }
}

// Rows [m, m + RB) of C against all of W, in RB x (CV vectors) blocks.
template <typename T, int RB, int CV>
FASTRNN_INLINE void gemm_rows(int64_t m, int64_t K, int64_t N, const T* A, int64_t lda, const T* W,
                              int64_t ldw, T* C, int64_t ldc) {
  constexpr int64_t VN = 64 / sizeof(T);
  const T* a = A + m * lda;
  T* c = C + m * ldc;
  int64_t n = 0;
  for (; n + CV * VN <= N; n += CV * VN) gemm_block<T, RB, CV>(K, a, lda, W + n, ldw, c + n, ldc);
  for (; n + VN <= N; n += VN) gemm_block<T, RB, 1>(K, a, lda, W + n, ldw, c + n, ldc);
  if (n < N) gemm_cols_tail<T>(RB, K, n, N, a, lda, W, ldw, c, ldc);
}

// Tall blocks first: W streams through the cache once per RB1 rows of C, and at the step
// sizes here W^T is larger than L1, so every pass is an L2 stream. Then RB2-row blocks,
// then single rows.
template <typename T, int RB1, int CV1, int RB2, int CV2, int CVR>
FASTRNN_INLINE void gemm_acc_impl(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda,
                                  const T* W, int64_t ldw, T* C, int64_t ldc) {
  constexpr int64_t VN = 64 / sizeof(T);
  int64_t m = 0;
  for (; m + RB1 <= M; m += RB1) gemm_rows<T, RB1, CV1>(m, K, N, A, lda, W, ldw, C, ldc);
  for (; m + RB2 <= M; m += RB2) gemm_rows<T, RB2, CV2>(m, K, N, A, lda, W, ldw, C, ldc);
  for (; m < M; ++m) {
    const T* a = A + m * lda;
    T* c = C + m * ldc;
    int64_t n = 0;
    for (; n + CVR * VN <= N; n += CVR * VN) gemm_row<T, CVR, 2>(K, a, W + n, ldw, c + n);
    for (; n + VN <= N; n += VN) gemm_row<T, 1, 4>(K, a, W + n, ldw, c + n);
    if (n < N) gemm_cols_tail<T>(1, K, n, N, a, lda, W, ldw, c, ldc);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTRNN_TARGET(t) __attribute__((target(t)))
#else
#define FASTRNN_TARGET(t)
#endif

template <typename T>
using GemmFn = void (*)(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t);

template <typename T>
FASTRNN_TARGET("arch=x86-64-v4") void gemm_avx512(int64_t M, int64_t K, int64_t N, const T* A,
                                                   int64_t lda, const T* W, int64_t ldw, T* C, int64_t ldc) {
  // 8 x 2 beat 4 x 2 by 5-12% forward and backward at B = 8..32, H = 64..128, and 8 x 3
  // and 6 x 3 by less or not at all (interleaved runs in one process, single thread)
  gemm_acc_impl<T, 8, 2, 4, 2, 4>(M, K, N, A, lda, W, ldw, C, ldc);  // 16 (8) of 32 zmm
}
template <typename T>
FASTRNN_TARGET("arch=x86-64-v3") void gemm_avx2(int64_t M, int64_t K, int64_t N, const T* A,
                                                 int64_t lda, const T* W, int64_t ldw, T* C, int64_t ldc) {
  gemm_acc_impl<T, 4, 1, 4, 1, 2>(M, K, N, A, lda, W, ldw, C, ldc);  // 8 of 16 ymm
}
template <typename T>
void gemm_baseline(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda, const T* W, int64_t ldw,
                   T* C, int64_t ldc) {
  gemm_acc_impl<T, 2, 1, 2, 1, 1>(M, K, N, A, lda, W, ldw, C, ldc);  // 8 of 16 xmm
}

template <typename T>
GemmFn<T> pick_gemm() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return &gemm_avx512<T>;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &gemm_avx2<T>;
#endif
  return &gemm_baseline<T>;
}

template <typename T>
void gemm_acc(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda, const T* W, int64_t ldw, T* C,
              int64_t ldc) {
  static const GemmFn<T> fn = pick_gemm<T>();
  fn(M, K, N, A, lda, W, ldw, C, ldc);
}

// The register-blocked kernel wins while a step's product is small: at (B=8, K=128, N=512)
// it ran a step in about half the time of at::addmm_ on this project's 2-core CPU, while
// at (B=64, K=512, N=2048) BLAS (threaded, cache-blocked) was several times faster.
// The crossover measured there lies between 2^21 and 2^23 multiply-adds. Re-measured with
// the 8-row blocks: at 6M-8M multiply-adds a step (GRU/LSTM B=32, H=256) BLAS still won by
// 10-25% forward and backward, so the threshold stays at 2^22.
inline bool use_blas(int64_t M, int64_t K, int64_t N) { return M * K * N > (int64_t(1) << 22); }

// A row-major copy of a (K x N) matrix that is usually a transposed view. Copied in square
// tiles so both the reads and the writes stay in L1: Tensor::contiguous() took about 30 us
// for a 64 x 256 transpose here, a fixed cost as large as 25 LSTM steps at B=1, H=64.
template <typename T>
at::Tensor row_major_copy(const at::Tensor& w) {
  if (w.is_contiguous()) return w;
  const int64_t K = w.size(0), N = w.size(1), sk = w.stride(0), sn = w.stride(1);
  auto out = fresh({K, N}, w.options());
  const T* src = w.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  constexpr int64_t TILE = 16;
  for (int64_t k0 = 0; k0 < K; k0 += TILE)
    for (int64_t n0 = 0; n0 < N; n0 += TILE) {
      const int64_t k1 = std::min(K, k0 + TILE), n1 = std::min(N, n0 + TILE);
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t n = n0; n < n1; ++n) dst[k * N + n] = src[k * sk + n * sn];
    }
  return out;
}

// The per-step product C += A @ W with the choice above. W (K x N) may be a transposed
// view: BLAS takes it as is, the kernel gets a row-major copy made once per call.
template <typename T>
struct StepGemm {
  at::Tensor w;    // K x N view for BLAS
  at::Tensor wc;   // K x N row-major copy for the kernel (owned: wp points into it)
  const T* wp;
  int64_t K, N;
  bool blas;
  StepGemm(const at::Tensor& w_kn, int64_t M)
      : w(w_kn), K(w_kn.size(0)), N(w_kn.size(1)), blas(use_blas(M, w_kn.size(0), w_kn.size(1))) {
    wc = blas ? w_kn : row_major_copy<T>(w_kn);
    wp = blas ? nullptr : wc.data_ptr<T>();
  }
  // C[0:M] += A[0:M] @ W ; A with row stride lda, C with row stride ldc.
  void acc(int64_t M, const T* A, int64_t lda, T* C, int64_t ldc) const {
    if (M == 0) return;
    if (blas) {
      auto opts = w.options();
      auto a = torch::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
      auto c = torch::from_blob(C, {M, N}, {ldc, 1}, opts);
      c.addmm_(a, w);
    } else {
      gemm_acc<T>(M, K, N, A, lda, wp, N, C, ldc);
    }
  }
};

inline bool active(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// End of a forward step: rows whose sequence is running write their new state (src) to
// the output y_t and the carried state; the others keep the state and output zeros.
template <typename T>
void commit_step(int64_t B, int64_t N, int64_t t, const int64_t* L, const T* src, T* y_t, T* state) {
  for (int64_t b = 0; b < B; ++b) {
    if (active(L, t, b)) {
      if (src != y_t) std::copy(src + b * N, src + (b + 1) * N, y_t + b * N);
      std::copy(src + b * N, src + (b + 1) * N, state + b * N);
    } else {
      std::fill(y_t + b * N, y_t + (b + 1) * N, T(0));
    }
  }
}

// End of a backward step: the carried gradient takes the new rows where the step was active.
template <typename T>
void carry_active(int64_t B, int64_t N, int64_t t, const int64_t* L, const T* src, T* carried) {
  for (int64_t b = 0; b < B; ++b) {
    if (active(L, t, b)) std::copy(src + b * N, src + (b + 1) * N, carried + b * N);
  }
}

// ---------------------------------------------------------------------------------------
// Row loops over the batch for one step (cloned per ISA for float).
// ---------------------------------------------------------------------------------------
template <typename T>
FASTRNN_INLINE void lstm_fwd_rows_impl(int64_t B, int64_t H, int64_t t, const int64_t* lengths,
                                       T* gates, const T* c_prev, T* c, T* m) {
  for (int64_t b = 0; b < B; ++b) {
    if (active(lengths, t, b)) {
      lstm_fwd_row<T>(H, gates + b * 4 * H, c_prev + b * H, c + b * H, m + b * H);
    } else {  // state carried; the workspace row is zeroed so every output is defined
      std::copy(c_prev + b * H, c_prev + (b + 1) * H, c + b * H);
      std::fill(gates + b * 4 * H, gates + (b + 1) * 4 * H, T(0));
    }
  }
}
FASTRNN_CLONES void lstm_fwd_rows(int64_t B, int64_t H, int64_t t, const int64_t* L, float* g,
                                  const float* cp, float* c, float* m) {
  lstm_fwd_rows_impl<float>(B, H, t, L, g, cp, c, m);
}
void lstm_fwd_rows(int64_t B, int64_t H, int64_t t, const int64_t* L, double* g, const double* cp,
                   double* c, double* m) {
  lstm_fwd_rows_impl<double>(B, H, t, L, g, cp, c, m);
}

template <typename T>
FASTRNN_INLINE void lstm_bwd_rows_impl(int64_t B, int64_t H, int64_t t, const int64_t* lengths,
                                       const T* gates, const T* c, const T* c_prev, const T* dm,
                                       T* dc, T* dgates) {
  for (int64_t b = 0; b < B; ++b) {
    if (active(lengths, t, b)) {
      lstm_bwd_row<T>(H, gates + b * 4 * H, c + b * H, c_prev + b * H, dm + b * H, dc + b * H,
                      dgates + b * 4 * H);
    } else {
      std::fill(dgates + b * 4 * H, dgates + (b + 1) * 4 * H, T(0));
    }
  }
}
FASTRNN_CLONES void lstm_bwd_rows(int64_t B, int64_t H, int64_t t, const int64_t* L, const float* g,
                                  const float* c, const float* cp, const float* dm, float* dc,
                                  float* dg) {
  lstm_bwd_rows_impl<float>(B, H, t, L, g, c, cp, dm, dc, dg);
}
void lstm_bwd_rows(int64_t B, int64_t H, int64_t t, const int64_t* L, const double* g,
                   const double* c, const double* cp, const double* dm, double* dc, double* dg) {
  lstm_bwd_rows_impl<double>(B, H, t, L, g, c, cp, dm, dc, dg);
}

template <typename T>
FASTRNN_INLINE void gru_fwd_rows_impl(int64_t B, int64_t H, int64_t t, const int64_t* lengths,
                                      const T* x, int64_t ldx, const T* gh, const T* b_hn,
                                      const T* h_prev, T* acts, T* h) {
  for (int64_t b = 0; b < B; ++b) {
    if (active(lengths, t, b)) {
      gru_fwd_row<T>(H, x + b * ldx, gh + b * 3 * H, b_hn, h_prev + b * H, acts + b * 4 * H, h + b * H);
    } else {
      std::fill(acts + b * 4 * H, acts + (b + 1) * 4 * H, T(0));
    }
  }
}
FASTRNN_CLONES void gru_fwd_rows(int64_t B, int64_t H, int64_t t, const int64_t* L, const float* x,
                                 int64_t ldx, const float* gh, const float* bhn, const float* hp,
                                 float* acts, float* h) {
  gru_fwd_rows_impl<float>(B, H, t, L, x, ldx, gh, bhn, hp, acts, h);
}
void gru_fwd_rows(int64_t B, int64_t H, int64_t t, const int64_t* L, const double* x, int64_t ldx,
                  const double* gh, const double* bhn, const double* hp, double* acts, double* h) {
  gru_fwd_rows_impl<double>(B, H, t, L, x, ldx, gh, bhn, hp, acts, h);
}

template <typename T>
FASTRNN_INLINE void gru_bwd_rows_impl(int64_t B, int64_t H, int64_t t, const int64_t* lengths,
                                      const T* acts, const T* h_prev, const T* dh, T* dx, T* dgh,
                                      T* dh_direct) {
  for (int64_t b = 0; b < B; ++b) {
    if (active(lengths, t, b)) {
      gru_bwd_row<T>(H, acts + b * 4 * H, h_prev + b * H, dh + b * H, dx + b * 3 * H,
                     dgh + b * 3 * H, dh_direct + b * H);
    } else {
      std::fill(dx + b * 3 * H, dx + (b + 1) * 3 * H, T(0));
      std::fill(dgh + b * 3 * H, dgh + (b + 1) * 3 * H, T(0));
    }
  }
}
FASTRNN_CLONES void gru_bwd_rows(int64_t B, int64_t H, int64_t t, const int64_t* L, const float* a,
                                 const float* hp, const float* dh, float* dx, float* dgh, float* dd) {
  gru_bwd_rows_impl<float>(B, H, t, L, a, hp, dh, dx, dgh, dd);
}
void gru_bwd_rows(int64_t B, int64_t H, int64_t t, const int64_t* L, const double* a,
                  const double* hp, const double* dh, double* dx, double* dgh, double* dd) {
  gru_bwd_rows_impl<double>(B, H, t, L, a, hp, dh, dx, dgh, dd);
}

template <typename T>
FASTRNN_INLINE void rnn_fwd_rows_impl(int64_t B, int64_t H, bool relu, const T* a, T* h) {
  for (int64_t b = 0; b < B; ++b) rnn_fwd_row<T>(H, relu, a + b * H, h + b * H);
}
FASTRNN_CLONES void rnn_fwd_rows(int64_t B, int64_t H, bool relu, const float* a, float* h) {
  rnn_fwd_rows_impl<float>(B, H, relu, a, h);
}
void rnn_fwd_rows(int64_t B, int64_t H, bool relu, const double* a, double* h) {
  rnn_fwd_rows_impl<double>(B, H, relu, a, h);
}

template <typename T>
FASTRNN_INLINE void rnn_bwd_rows_impl(int64_t B, int64_t H, int64_t t, const int64_t* lengths,
                                      bool relu, const T* h, const T* dh, T* da) {
  for (int64_t b = 0; b < B; ++b) {
    if (active(lengths, t, b)) {
      rnn_bwd_row<T>(H, relu, h + b * H, dh + b * H, da + b * H);
    } else {
      std::fill(da + b * H, da + (b + 1) * H, T(0));
    }
  }
}
FASTRNN_CLONES void rnn_bwd_rows(int64_t B, int64_t H, int64_t t, const int64_t* L, bool relu,
                                 const float* h, const float* dh, float* da) {
  rnn_bwd_rows_impl<float>(B, H, t, L, relu, h, dh, da);
}
void rnn_bwd_rows(int64_t B, int64_t H, int64_t t, const int64_t* L, bool relu, const double* h,
                  const double* dh, double* da) {
  rnn_bwd_rows_impl<double>(B, H, t, L, relu, h, dh, da);
}

// ---------------------------------------------------------------------------------------
// Argument checks: direct calls with bad arguments raise, never crash.
// ---------------------------------------------------------------------------------------
// Everything past these checks relies on them: the kernels index every buffer with the sizes
// derived from x_proj (forward) or the saved gates (backward), so one tensor of another shape
// would be read or written out of bounds. Strides are free: each tensor is made contiguous.
void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& like,
                  std::vector<int64_t> shape) {
  TORCH_CHECK(t.device().is_cpu(), "fastrnn cpp backend: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.layout() == at::kStrided, "fastrnn cpp backend: ", name, " must be a dense (strided) tensor, got ",
              t.layout());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "fastrnn cpp backend: ", name, " has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "fastrnn cpp backend: ", name, " must have shape ",
              at::IntArrayRef(shape), ", got ", t.sizes());
}

// x_proj: rows of each (t, b) must be contiguous; any strides between rows are accepted.
at::Tensor rows_contiguous(const at::Tensor& x) {
  return x.stride(2) == 1 ? x : x.contiguous();
}

std::tuple<int64_t, int64_t, int64_t> check_x(const at::Tensor& x, int64_t gates,
                                              const c10::optional<at::Tensor>& lengths) {
  TORCH_CHECK(x.device().is_cpu(), "fastrnn cpp backend: x_proj must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.layout() == at::kStrided, "fastrnn cpp backend: x_proj must be a dense (strided) tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "fastrnn cpp backend supports float32 and float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 3, "fastrnn cpp backend: x_proj must be 3-D (T, B, G), got ", x.dim(), "-D");
  TORCH_CHECK(x.size(0) > 0, "Expected sequence length to be larger than 0 in RNN");
  TORCH_CHECK(x.size(2) % gates == 0, "fastrnn cpp backend: x_proj's last dim ", x.size(2),
              " is not a multiple of ", gates);
  if (lengths) {
    TORCH_CHECK(lengths->device().is_cpu() && lengths->scalar_type() == at::kLong &&
                    lengths->dim() == 1 && lengths->size(0) == x.size(1),
                "fastrnn cpp backend: lengths must be a CPU int64 tensor of shape (", x.size(1), ")");
  }
  return {x.size(0), x.size(1), x.size(2) / gates};
}

// Lengths outside [0, T] index nothing, but would silently mean something else (a length
// above T runs T steps), so they are refused like any other inconsistent argument.
const int64_t* lengths_ptr(const c10::optional<at::Tensor>& lengths, int64_t T, at::Tensor& keep) {
  if (!lengths) return nullptr;
  TORCH_CHECK(lengths->layout() == at::kStrided, "fastrnn cpp backend: lengths must be a dense tensor");
  keep = lengths->contiguous();
  const int64_t* L = keep.data_ptr<int64_t>();
  for (int64_t b = 0; b < keep.numel(); ++b) {
    TORCH_CHECK(L[b] >= 0 && L[b] <= T, "fastrnn cpp backend: lengths[", b, "] = ", L[b],
                " is outside [0, ", T, "]");
  }
  return L;
}

// A 2-D tensor's size(dim) for deriving the other shapes (size() itself would throw an
// IndexError, not the RuntimeError of every other argument error).
int64_t size_2d(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == 2, "fastrnn cpp backend: ", name, " must be 2-D, got ", t.dim(), "-D");
  return t.size(dim);
}

// Step order and the neighbouring step a step starts from.
inline int64_t step_at(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }

// (T, B, P): the state each step started from (h0 at the first step of each sequence; in
// reverse with lengths, h0 until a sequence's own last step). Inactive entries unused.
at::Tensor h_prev_of(const at::Tensor& y, const at::Tensor& h0, const c10::optional<at::Tensor>& lengths,
                     bool reverse) {
  auto h0u = h0.unsqueeze(0);
  int64_t T = y.size(0);
  if (!reverse) return at::cat({h0u, y.narrow(0, 0, T - 1)}, 0);
  auto hp = at::cat({y.narrow(0, 1, T - 1), h0u}, 0);
  if (!lengths) return hp;
  auto t_next = at::arange(1, T + 1, lengths->options()).unsqueeze(1);
  auto started = (t_next < lengths->unsqueeze(0)).unsqueeze(2);
  return at::where(started, hp, h0u);
}

// =======================================================================================
// LSTM
// =======================================================================================
template <typename T>
std::vector<at::Tensor> lstm_forward_impl(const at::Tensor& x, const at::Tensor& w_hh,
                                          const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0,
                                          const at::Tensor& c0, const int64_t* L, bool reverse,
                                          bool workspace) {
  const int64_t T_ = x.size(0), B = x.size(1), H = x.size(2) / 4, P = h0.size(1);
  const int64_t sx0 = x.stride(0), sx1 = x.stride(1);
  auto y = fresh({T_, B, P}, x.options());
  // With the workspace (a backward will follow) every step keeps its gates and c_t; without
  // it (inference) one gates slot and two alternating c slots suffice: O(B*H) memory.
  auto gates = fresh({workspace ? T_ : 1, B, 4 * H}, x.options());
  auto cs = fresh({workspace ? T_ : 2, B, H}, x.options());
  auto h = h0.clone();  // carried h state
  auto m = w_hr ? fresh({B, H}, x.options()) : at::Tensor();
  StepGemm<T> rec(w_hh.t(), B);  // (P x 4H)
  c10::optional<StepGemm<T>> proj;
  at::Tensor hnew;
  if (w_hr) {
    proj.emplace(w_hr->t(), B);  // (H x P)
    hnew = fresh({B, P}, x.options());
  }
  const T* xp = x.data_ptr<T>();
  T* gp = gates.data_ptr<T>();
  T* cp = cs.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  T* hp = h.data_ptr<T>();
  const T* c0p = c0.data_ptr<T>();
  int64_t prev = -1;
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = step_at(s, T_, reverse);
    const int64_t gslot = workspace ? t : 0, cslot = workspace ? t : s % 2;
    T* g = gp + gslot * B * 4 * H;
    for (int64_t b = 0; b < B; ++b) std::copy(xp + t * sx0 + b * sx1, xp + t * sx0 + b * sx1 + 4 * H, g + b * 4 * H);
    rec.acc(B, hp, P, g, 4 * H);
    const T* c_prev = prev < 0 ? c0p : cp + prev * B * H;
    T* c = cp + cslot * B * H;
    T* mp = w_hr ? m.data_ptr<T>() : yp + t * B * P;
    lstm_fwd_rows(B, H, t, L, g, c_prev, c, mp);
    if (w_hr) {
      T* hn = hnew.data_ptr<T>();
      std::fill(hn, hn + B * P, T(0));
      proj->acc(B, mp, H, hn, P);
      std::copy(hn, hn + B * P, yp + t * B * P);
    }
    commit_step(B, P, t, L, yp + t * B * P, yp + t * B * P, hp);
    prev = cslot;
  }
  auto c_n = cs[prev].clone();
  if (!workspace) return {y, h, c_n, at::empty({0}, x.options()), at::empty({0}, x.options())};
  return {y, h, c_n, gates, cs};
}

std::vector<at::Tensor> lstm_forward(const at::Tensor& x_proj, const at::Tensor& w_hh,
                                     const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0,
                                     const at::Tensor& c0, const c10::optional<at::Tensor>& lengths,
                                     bool reverse, bool workspace) {
  auto [T, B, H] = check_x(x_proj, 4, lengths);
  const int64_t P = w_hr ? size_2d(*w_hr, "w_hr", 0) : H;
  check_tensor(w_hh, "w_hh", x_proj, {4 * H, P});
  if (w_hr) check_tensor(*w_hr, "w_hr", x_proj, {P, H});
  check_tensor(h0, "h0", x_proj, {B, P});
  check_tensor(c0, "c0", x_proj, {B, H});
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  auto x = rows_contiguous(x_proj);
  auto w_hr_c = w_hr ? c10::optional<at::Tensor>(w_hr->contiguous()) : c10::nullopt;
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_forward", [&] {
    return lstm_forward_impl<scalar_t>(x, w_hh.contiguous(), w_hr_c, h0.contiguous(), c0.contiguous(), L, reverse,
                                       workspace);
  });
}

template <typename T>
std::vector<at::Tensor> lstm_backward_impl(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
                                           const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr,
                                           const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& y,
                                           const at::Tensor& gates, const at::Tensor& cs,
                                           const c10::optional<at::Tensor>& lengths, const int64_t* L,
                                           bool reverse) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = gates.size(2) / 4, P = h0.size(1);
  auto dgates = fresh({T_, B, 4 * H}, dy.options());
  auto dh = dh_n.clone();
  auto dc = dc_n.clone();
  auto dht = fresh({B, P}, dy.options());          // gradient reaching h_t
  auto dhnew = fresh({B, P}, dy.options());
  StepGemm<T> rec(w_hh, B);                       // dgates (B x 4H) @ W_hh (4H x P)
  c10::optional<StepGemm<T>> proj;
  at::Tensor dm, dh_out;
  if (w_hr) {
    proj.emplace(*w_hr, B);                      // dh_t (B x P) @ W_hr (P x H)
    dm = fresh({B, H}, dy.options());
    dh_out = fresh({T_, B, P}, dy.options());
  }
  const T* gp = gates.data_ptr<T>();
  const T* cp = cs.data_ptr<T>();
  const T* dyp = dy.data_ptr<T>();
  const T* c0p = c0.data_ptr<T>();
  T* dgp = dgates.data_ptr<T>();
  T* dhp = dh.data_ptr<T>();
  T* dcp = dc.data_ptr<T>();
  T* dtp = dht.data_ptr<T>();
  T* dnp = dhnew.data_ptr<T>();
  for (int64_t s = T_ - 1; s >= 0; --s) {
    const int64_t t = step_at(s, T_, reverse);
    const int64_t p = s > 0 ? step_at(s - 1, T_, reverse) : -1;
    const T* c_prev = p < 0 ? c0p : cp + p * B * H;
    const T* dyt = dyp + t * B * P;
    for (int64_t i = 0; i < B * P; ++i) dtp[i] = dhp[i] + dyt[i];
    const T* dmp = dtp;
    if (w_hr) {
      T* o = dh_out.data_ptr<T>() + t * B * P;
      for (int64_t b = 0; b < B; ++b) {
        if (active(L, t, b)) std::copy(dtp + b * P, dtp + (b + 1) * P, o + b * P);
        else std::fill(o + b * P, o + (b + 1) * P, T(0));
      }
      T* d = dm.data_ptr<T>();
      std::fill(d, d + B * H, T(0));
      proj->acc(B, dtp, P, d, H);
      dmp = d;
    }
    T* dg = dgp + t * B * 4 * H;
    lstm_bwd_rows(B, H, t, L, gp + t * B * 4 * H, cp + t * B * H, c_prev, dmp, dcp, dg);
    std::fill(dnp, dnp + B * P, T(0));
    rec.acc(B, dg, 4 * H, dnp, P);
    carry_active(B, P, t, L, dnp, dhp);
  }
  auto hp = h_prev_of(y, h0, lengths, reverse);
  auto dw_hh = at::mm(dgates.view({T_ * B, 4 * H}).t(), hp.reshape({T_ * B, P}));
  at::Tensor dw_hr = at::empty({0}, dy.options());
  if (w_hr) {
    auto o = gates.narrow(2, 3 * H, H);
    auto pre = o * at::tanh(cs);
    dw_hr = at::mm(dh_out.view({T_ * B, P}).t(), pre.reshape({T_ * B, H}));
  }
  return {dgates, dw_hh, dw_hr, dh, dc};
}

std::vector<at::Tensor> lstm_backward(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
                                      const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr,
                                      const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& y,
                                      const at::Tensor& gates, const at::Tensor& cs,
                                      const c10::optional<at::Tensor>& lengths, bool reverse) {
  auto [T, B, H] = check_x(gates, 4, lengths);
  // without a projection the kernel's dh rows are H long: P must be H, not just consistent
  const int64_t P = w_hr ? size_2d(*w_hr, "w_hr", 0) : H;
  check_tensor(dy, "dy", gates, {T, B, P});
  check_tensor(dh_n, "dh_n", gates, {B, P});
  check_tensor(dc_n, "dc_n", gates, {B, H});
  check_tensor(w_hh, "w_hh", gates, {4 * H, P});
  if (w_hr) check_tensor(*w_hr, "w_hr", gates, {P, H});
  check_tensor(h0, "h0", gates, {B, P});
  check_tensor(c0, "c0", gates, {B, H});
  check_tensor(y, "y", gates, {T, B, P});
  check_tensor(cs, "cs", gates, {T, B, H});
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  auto w_hr_c = w_hr ? c10::optional<at::Tensor>(w_hr->contiguous()) : c10::nullopt;
  return AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    return lstm_backward_impl<scalar_t>(dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(), w_hh.contiguous(),
                                        w_hr_c, h0.contiguous(), c0.contiguous(), y.contiguous(),
                                        gates.contiguous(), cs.contiguous(), lengths, L, reverse);
  });
}

// =======================================================================================
// GRU
// =======================================================================================
template <typename T>
std::vector<at::Tensor> gru_forward_impl(const at::Tensor& x, const at::Tensor& w_hh, const T* b_hn,
                                         const at::Tensor& h0, const int64_t* L, bool reverse, bool workspace) {
  const int64_t T_ = x.size(0), B = x.size(1), H = x.size(2) / 3;
  const int64_t sx0 = x.stride(0), sx1 = x.stride(1);
  auto y = fresh({T_, B, H}, x.options());
  auto acts = fresh({workspace ? T_ : 1, B, 4 * H}, x.options());  // one slot for inference
  auto h = h0.clone();
  auto hnew = fresh({B, H}, x.options());
  auto gh = fresh({B, 3 * H}, x.options());
  StepGemm<T> rec(w_hh.t(), B);  // (H x 3H)
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  T* ap = acts.data_ptr<T>();
  T* hp = h.data_ptr<T>();
  T* np = hnew.data_ptr<T>();
  T* ghp = gh.data_ptr<T>();
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = step_at(s, T_, reverse);
    std::fill(ghp, ghp + B * 3 * H, T(0));
    rec.acc(B, hp, H, ghp, 3 * H);
    gru_fwd_rows(B, H, t, L, xp + t * sx0, sx1, ghp, b_hn, hp, ap + (workspace ? t : 0) * B * 4 * H, np);
    commit_step(B, H, t, L, np, yp + t * B * H, hp);
  }
  if (!workspace) return {y, h, at::empty({0}, x.options())};
  return {y, h, acts};
}

std::vector<at::Tensor> gru_forward(const at::Tensor& x_proj, const at::Tensor& w_hh,
                                    const c10::optional<at::Tensor>& b_hn, const at::Tensor& h0,
                                    const c10::optional<at::Tensor>& lengths, bool reverse, bool workspace) {
  auto [T, B, H] = check_x(x_proj, 3, lengths);
  check_tensor(w_hh, "w_hh", x_proj, {3 * H, H});
  if (b_hn) check_tensor(*b_hn, "b_hn", x_proj, {H});
  check_tensor(h0, "h0", x_proj, {B, H});
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  auto x = rows_contiguous(x_proj);
  auto bc = b_hn ? b_hn->contiguous() : at::Tensor();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_forward", [&] {
    return gru_forward_impl<scalar_t>(x, w_hh.contiguous(), b_hn ? bc.data_ptr<scalar_t>() : nullptr,
                                      h0.contiguous(), L, reverse, workspace);
  });
}

template <typename T>
std::vector<at::Tensor> gru_backward_impl(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh,
                                          bool has_b_hn, const at::Tensor& h0, const at::Tensor& y,
                                          const at::Tensor& acts, const c10::optional<at::Tensor>& lengths,
                                          const int64_t* L, bool reverse) {
  const int64_t T_ = acts.size(0), B = acts.size(1), H = acts.size(2) / 4;
  auto hprev = h_prev_of(y, h0, lengths, reverse).contiguous();
  auto dx = fresh({T_, B, 3 * H}, dy.options());
  auto dgh = fresh({T_, B, 3 * H}, dy.options());
  auto dh = dh_n.clone();
  auto dht = fresh({B, H}, dy.options());
  auto dnew = fresh({B, H}, dy.options());
  StepGemm<T> rec(w_hh, B);  // dgh (B x 3H) @ W_hh (3H x H)
  const T* ap = acts.data_ptr<T>();
  const T* hpp = hprev.data_ptr<T>();
  const T* dyp = dy.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  T* dgp = dgh.data_ptr<T>();
  T* dhp = dh.data_ptr<T>();
  T* dtp = dht.data_ptr<T>();
  T* dnp = dnew.data_ptr<T>();
  for (int64_t s = T_ - 1; s >= 0; --s) {
    const int64_t t = step_at(s, T_, reverse);
    const T* dyt = dyp + t * B * H;
    for (int64_t i = 0; i < B * H; ++i) dtp[i] = dhp[i] + dyt[i];
    T* dgt = dgp + t * B * 3 * H;
    gru_bwd_rows(B, H, t, L, ap + t * B * 4 * H, hpp + t * B * H, dtp, dxp + t * B * 3 * H, dgt, dnp);
    rec.acc(B, dgt, 3 * H, dnp, H);
    carry_active(B, H, t, L, dnp, dhp);
  }
  auto dw_hh = at::mm(dgh.view({T_ * B, 3 * H}).t(), hprev.view({T_ * B, H}));
  auto db_hn = has_b_hn ? dgh.narrow(2, 2 * H, H).sum({0, 1}) : at::empty({0}, dy.options());
  return {dx, dw_hh, db_hn, dh};
}

std::vector<at::Tensor> gru_backward(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh,
                                     const c10::optional<at::Tensor>& b_hn, const at::Tensor& h0,
                                     const at::Tensor& y, const at::Tensor& acts,
                                     const c10::optional<at::Tensor>& lengths, bool reverse) {
  auto [T, B, H4] = check_x(acts, 4, lengths);
  const int64_t H = H4;
  check_tensor(dy, "dy", acts, {T, B, H});
  check_tensor(dh_n, "dh_n", acts, {B, H});
  check_tensor(w_hh, "w_hh", acts, {3 * H, H});
  if (b_hn) check_tensor(*b_hn, "b_hn", acts, {H});
  check_tensor(h0, "h0", acts, {B, H});
  check_tensor(y, "y", acts, {T, B, H});
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  return AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "gru_backward", [&] {
    return gru_backward_impl<scalar_t>(dy.contiguous(), dh_n.contiguous(), w_hh.contiguous(), b_hn.has_value(),
                                       h0.contiguous(), y.contiguous(), acts.contiguous(), lengths, L, reverse);
  });
}

// =======================================================================================
// Elman RNN
// =======================================================================================
template <typename T>
std::vector<at::Tensor> rnn_forward_impl(const at::Tensor& x, const at::Tensor& w_hh, const at::Tensor& h0,
                                         const int64_t* L, bool reverse, bool relu) {
  const int64_t T_ = x.size(0), B = x.size(1), H = x.size(2);
  const int64_t sx0 = x.stride(0), sx1 = x.stride(1);
  auto y = fresh({T_, B, H}, x.options());
  auto h = h0.clone();
  auto a = fresh({B, H}, x.options());
  auto hnew = fresh({B, H}, x.options());
  StepGemm<T> rec(w_hh.t(), B);  // (H x H)
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  T* hp = h.data_ptr<T>();
  T* app = a.data_ptr<T>();
  T* np = hnew.data_ptr<T>();
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = step_at(s, T_, reverse);
    for (int64_t b = 0; b < B; ++b) std::copy(xp + t * sx0 + b * sx1, xp + t * sx0 + b * sx1 + H, app + b * H);
    rec.acc(B, hp, H, app, H);
    rnn_fwd_rows(B, H, relu, app, np);
    commit_step(B, H, t, L, np, yp + t * B * H, hp);
  }
  return {y, h};
}

bool is_relu(const std::string& nonlinearity) {
  TORCH_CHECK(nonlinearity == "tanh" || nonlinearity == "relu", "fastrnn: Unknown nonlinearity '",
              nonlinearity, "'. Select from 'tanh' or 'relu'.");
  return nonlinearity == "relu";
}

std::vector<at::Tensor> rnn_forward(const at::Tensor& x_proj, const at::Tensor& w_hh, const at::Tensor& h0,
                                    const c10::optional<at::Tensor>& lengths, bool reverse,
                                    const std::string& nonlinearity) {
  auto [T, B, H] = check_x(x_proj, 1, lengths);
  check_tensor(w_hh, "w_hh", x_proj, {H, H});
  check_tensor(h0, "h0", x_proj, {B, H});
  const bool relu = is_relu(nonlinearity);
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  auto x = rows_contiguous(x_proj);
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_forward", [&] {
    return rnn_forward_impl<scalar_t>(x, w_hh.contiguous(), h0.contiguous(), L, reverse, relu);
  });
}

template <typename T>
std::vector<at::Tensor> rnn_backward_impl(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh,
                                          const at::Tensor& h0, const at::Tensor& y,
                                          const c10::optional<at::Tensor>& lengths, const int64_t* L,
                                          bool reverse, bool relu) {
  const int64_t T_ = y.size(0), B = y.size(1), H = y.size(2);
  auto dx = fresh({T_, B, H}, dy.options());
  auto dh = dh_n.clone();
  auto dht = fresh({B, H}, dy.options());
  auto dnew = fresh({B, H}, dy.options());
  StepGemm<T> rec(w_hh, B);  // da (B x H) @ W_hh (H x H)
  const T* yp = y.data_ptr<T>();
  const T* dyp = dy.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  T* dhp = dh.data_ptr<T>();
  T* dtp = dht.data_ptr<T>();
  T* dnp = dnew.data_ptr<T>();
  for (int64_t s = T_ - 1; s >= 0; --s) {
    const int64_t t = step_at(s, T_, reverse);
    const T* dyt = dyp + t * B * H;
    for (int64_t i = 0; i < B * H; ++i) dtp[i] = dhp[i] + dyt[i];
    T* da = dxp + t * B * H;
    rnn_bwd_rows(B, H, t, L, relu, yp + t * B * H, dtp, da);
    std::fill(dnp, dnp + B * H, T(0));
    rec.acc(B, da, H, dnp, H);
    carry_active(B, H, t, L, dnp, dhp);
  }
  auto hp = h_prev_of(y, h0, lengths, reverse);
  auto dw_hh = at::mm(dx.view({T_ * B, H}).t(), hp.reshape({T_ * B, H}));
  return {dx, dw_hh, dh};
}

std::vector<at::Tensor> rnn_backward(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh,
                                     const at::Tensor& h0, const at::Tensor& y,
                                     const c10::optional<at::Tensor>& lengths, bool reverse,
                                     const std::string& nonlinearity) {
  auto [T, B, H] = check_x(y, 1, lengths);
  check_tensor(dy, "dy", y, {T, B, H});
  check_tensor(dh_n, "dh_n", y, {B, H});
  check_tensor(w_hh, "w_hh", y, {H, H});
  check_tensor(h0, "h0", y, {B, H});
  const bool relu = is_relu(nonlinearity);
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  return AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "rnn_backward", [&] {
    return rnn_backward_impl<scalar_t>(dy.contiguous(), dh_n.contiguous(), w_hh.contiguous(), h0.contiguous(),
                                       y.contiguous(), lengths, L, reverse, relu);
  });
}

}  // namespace
}  // namespace fastrnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrnn C++ CPU backend: whole-sequence recurrences (float32, float64)";
  using namespace fastrnn;
  m.def("lstm_forward", &lstm_forward, "LSTM recurrence forward", py::arg("x_proj"), py::arg("w_hh"),
        py::arg("w_hr"), py::arg("h0"), py::arg("c0"), py::arg("lengths"), py::arg("reverse"),
        py::arg("workspace") = true);
  m.def("lstm_backward", &lstm_backward, "LSTM recurrence backward");
  m.def("gru_forward", &gru_forward, "GRU recurrence forward", py::arg("x_proj"), py::arg("w_hh"),
        py::arg("b_hn"), py::arg("h0"), py::arg("lengths"), py::arg("reverse"), py::arg("workspace") = true);
  m.def("gru_backward", &gru_backward, "GRU recurrence backward");
  m.def("rnn_forward", &rnn_forward, "Elman RNN recurrence forward");
  m.def("rnn_backward", &rnn_backward, "Elman RNN recurrence backward");
  m.def("set_poison", [](bool on) { g_poison = on; }, "NaN-fill every buffer the kernels write (tests)");
  m.def("uses_blas", &use_blas, "whether a (M x K) @ (K x N) step product goes to BLAS");
}
