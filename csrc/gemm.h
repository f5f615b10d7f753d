// The per-step recurrent product of the C++ backend: C[0:M] += A[0:M] @ W, through a
// register-blocked kernel written for small matrices (where a dispatched GEMM costs more in
// overhead than in arithmetic) or, for large ones, through oneDNN with W packed once per
// call (float32) or torch's BLAS (see use_blas, OneDnn).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "vec.h"

namespace fastrnn {

// Every buffer a kernel writes comes from fresh(): NaN-filled when the test harness asks
// (fastrnn._cpp sets this from FASTRNN_POISON), so an element a kernel forgets to write, or
// reads before writing, fails the parity checks instead of passing by luck.
inline bool g_poison = false;

//
// A large buffer's memory is fresh from the kernel, and its first touch faults page by page:
// on the 2-vCPU VMs here, touching a fresh 131 MB took 54 ms against 4 ms to write it again
// (a backward's workspaces and gradients at T=100, B=64, H=512 are ~200 MB). Where Linux
// gives transparent huge pages on request (its "madvise" mode), the 2 MB-aligned inside of a
// buffer of 8 MB or more asks for them (as torch does for all its buffers under
// THP_MEM_ALLOC_ENABLE=1): 8 ms for the same 131 MB. Nothing else changes.
inline void advise_huge_pages(void* p, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t HP = uintptr_t(2) << 20;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + HP - 1) & ~(HP - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + n) & ~(HP - 1);
  if (e > a) (void)madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);  // a hint: errors are ignored
#else
  (void)p;
  (void)n;
#endif
}

inline at::Tensor fresh(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (g_poison) return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), options);
  auto t = at::empty(sizes, options);
  if (t.nbytes() >= (size_t(8) << 20)) advise_huge_pages(t.data_ptr(), t.nbytes());
  return t;
}

// ---------------------------------------------------------------------------------------
// C[m, :] += A[m, :] @ W  (A: M x K, row stride lda; W: K x N row-major, ldw; C: ldc).
// The product is summed from zero and added to C once: accumulating into C (which holds the
// input projection and biases) rounded every small product at C's magnitude, and with inputs
// and weights at 1e-6 scale that made an Elman RNN's output ~1 ulp RMS off instead of ~0.3.
// An RB x (CV * 64 bytes) block of C is held in vector registers across the whole K loop
// (written with GCC vector types: with plain arrays GCC kept the accumulators on the stack
// and did a load-FMA-store per k); W rows stream from cache. The block shape is chosen per
// ISA so the accumulators fit the register file (AVX-512: 32 zmm, AVX2: 16 ymm, SSE: 16 xmm).
// These are always inlined into the per-ISA instance of the kernel (recurrence.h), which
// compiles them for that ISA.
// ---------------------------------------------------------------------------------------
// RB rows x CV vectors of C, accumulated over all K. ADD = false: C = A @ W (C's old
// contents never read: a fresh buffer needs no zero fill first).
template <typename T, int RB, int CV, bool ADD = true>
FASTRNN_INLINE void gemm_block(int64_t K, const T* A, int64_t lda, const T* W, int64_t ldw, T* C, int64_t ldc) {
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
    for (int v = 0; v < CV; ++v)
      vstore<T>(C + r * ldc + v * VN, ADD ? vload<T>(C + r * ldc + v * VN) + acc[r][v] : acc[r][v]);
}

// One row of C (a matrix-vector step, B = 1): a single chain of FMAs per accumulator would
// wait on FMA latency every k, so CV column vectors and KS partial sums over k run in parallel
// and are added at the end (a fixed order: results stay reproducible).
template <typename T, int CV, int KS, bool ADD = true>
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
  for (int v = 0; v < CV; ++v) vstore<T>(c + v * VN, ADD ? vload<T>(c + v * VN) + acc[0][v] : acc[0][v]);
}

// Columns past the last full vector: plain loops (few, and the compiler vectorises them).
template <typename T, bool ADD = true>
FASTRNN_INLINE void gemm_cols_tail(int64_t rows, int64_t K, int64_t n0, int64_t N, const T* A, int64_t lda, const T* W,
                                   int64_t ldw, T* C, int64_t ldc) {
  T sum[64 / sizeof(T)];  // fewer columns than one vector
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = n0; j < N; ++j) sum[j - n0] = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const T a = A[r * lda + k];
      for (int64_t j = n0; j < N; ++j) sum[j - n0] += a * W[k * ldw + j];
    }
    for (int64_t j = n0; j < N; ++j) C[r * ldc + j] = ADD ? C[r * ldc + j] + sum[j - n0] : sum[j - n0];
  }
}

// Rows [m, m + RB) of C against all of W, in RB x (CV vectors) blocks.
template <typename T, int RB, int CV, bool ADD = true>
FASTRNN_INLINE void gemm_rows(int64_t m, int64_t K, int64_t N, const T* A, int64_t lda, const T* W, int64_t ldw, T* C,
                              int64_t ldc) {
  constexpr int64_t VN = 64 / sizeof(T);
  const T* a = A + m * lda;
  T* c = C + m * ldc;
  int64_t n = 0;
  for (; n + CV * VN <= N; n += CV * VN) gemm_block<T, RB, CV, ADD>(K, a, lda, W + n, ldw, c + n, ldc);
  for (; n + VN <= N; n += VN) gemm_block<T, RB, 1, ADD>(K, a, lda, W + n, ldw, c + n, ldc);
  if (n < N) gemm_cols_tail<T, ADD>(RB, K, n, N, a, lda, W, ldw, c, ldc);
}

// Tall blocks first: W streams through the cache once per RB1 rows of C, and at the step
// sizes here W^T is larger than L1, so every pass is an L2 stream. Then RB2-row blocks,
// then single rows (CVR vectors wide). ADD = false: C = A @ W.
template <typename T, class Shape, bool ADD = true>
FASTRNN_INLINE void gemm_acc(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda, const T* W, int64_t ldw, T* C,
                             int64_t ldc) {
  constexpr int64_t VN = 64 / sizeof(T);
  constexpr int RB1 = Shape::RB1, CV1 = Shape::CV1, RB2 = Shape::RB2, CV2 = Shape::CV2, CVR = Shape::CVR;
  int64_t m = 0;
  for (; m + RB1 <= M; m += RB1) gemm_rows<T, RB1, CV1, ADD>(m, K, N, A, lda, W, ldw, C, ldc);
  for (; m + RB2 <= M; m += RB2) gemm_rows<T, RB2, CV2, ADD>(m, K, N, A, lda, W, ldw, C, ldc);
  for (; m < M; ++m) {
    const T* a = A + m * lda;
    T* c = C + m * ldc;
    int64_t n = 0;
    for (; n + CVR * VN <= N; n += CVR * VN) gemm_row<T, CVR, 2, ADD>(K, a, W + n, ldw, c + n);
    for (; n + VN <= N; n += VN) gemm_row<T, 1, 4, ADD>(K, a, W + n, ldw, c + n);
    if (n < N) gemm_cols_tail<T, ADD>(1, K, n, N, a, lda, W, ldw, c, ldc);
  }
}

// Block shapes per ISA level, in 64-byte vectors (recurrence.h picks one with the level).
// AVX-512: 8 x 2 beat 4 x 2 by 5-12% forward and backward at B = 8..32, H = 64..128, and
// 8 x 3 and 6 x 3 by less or not at all (interleaved runs in one process, single thread).
struct GemmShapeAvx512 {  // 16 (8) of 32 zmm
  static constexpr int RB1 = 8, CV1 = 2, RB2 = 4, CV2 = 2, CVR = 4;
};
struct GemmShapeAvx2 {  // 8 of 16 ymm
  static constexpr int RB1 = 4, CV1 = 1, RB2 = 4, CV2 = 1, CVR = 2;
};
struct GemmShapeBaseline {  // 8 of 16 xmm
  static constexpr int RB1 = 2, CV1 = 1, RB2 = 2, CV2 = 1, CVR = 1;
};

// oneDNN's matmul (torch's mkldnn::_linear_pointwise, called through the dispatcher: torch
// exports no oneDNN symbol) with W reordered once per call into the blocked layout its
// kernels read (mkldnn::_reorder_linear_weight). torch's addmm goes to MKL, which repacks W
// on every call and, on AMD CPUs, runs its AVX2 code. Per step product on a 2-vCPU AMD EPYC
// (Zen 5, AVX-512), 2 threads: (M, K, N) = (64, 512, 2048) 275 us against addmm's 718,
// (32, 256, 1024) 50 against 100, (8, 256, 1024) 21 against 42. Its results were bitwise
// identical at 1 and 2 threads for every shape tried (M 1..64, K and N 128..8192): the
// reduction over K is not split between threads. float32 only (oneDNN has no float64 path),
// and only while torch.backends.mkldnn is enabled.
struct OneDnn {
  c10::optional<c10::OperatorHandle> linear;   // mkldnn::_linear_pointwise
  c10::optional<c10::OperatorHandle> reorder;  // mkldnn::_reorder_linear_weight
  static const OneDnn& get() {
    static const OneDnn ops{c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""}),
                            c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""})};
    return ops;
  }
  static bool usable() { return get().linear && get().reorder && at::globalContext().userEnabledMkldnn(); }
  // w_nk (N x K, contiguous) in the layout oneDNN reads for M-row products.
  static at::Tensor pack(const at::Tensor& w_nk, int64_t M) {
    std::vector<c10::IValue> st{w_nk, c10::IValue(M)};
    get().reorder->callBoxed(&st);
    return st[0].toTensor();
  }
  // a (M x K) @ w^T (+ bias) for w (N x K) as it is or packed by pack(): a fresh (M x N)
  // tensor.
  static at::Tensor mm(const at::Tensor& a, const at::Tensor& w, const c10::optional<at::Tensor>& bias = {}) {
    std::vector<c10::IValue> st{a,
                                w,
                                bias ? c10::IValue(bias->contiguous()) : c10::IValue(),  // read as N floats
                                c10::IValue(std::string("none")),
                                c10::IValue(c10::List<c10::optional<at::Scalar>>()),
                                c10::IValue(std::string(""))};
    get().linear->callBoxed(&st);
    return st[0].toTensor();
  }
};

// The register-blocked kernel wins while a step's product is small: at (B=8, K=128, N=512)
// it ran a step in about half the time of at::addmm_ on this project's 2-core CPU, while
// at (B=64, K=512, N=2048) BLAS (threaded, cache-blocked) was several times faster.
// The crossover measured there lies between 2^21 and 2^23 multiply-adds. Re-measured with
// the 8-row blocks: at 6M-8M multiply-adds a step (GRU/LSTM B=32, H=256) BLAS still won by
// 10-25% forward and backward, so the threshold stays at 2^22.
inline bool use_blas(int64_t M, int64_t K, int64_t N) { return M * K * N > (int64_t(1) << 22); }

// Where a product BLAS takes goes to oneDNN instead (see OneDnn). FASTRNN_ONEDNN_MIN (a
// multiply-add count) is read once, for measuring the crossover; 0 turns oneDNN off.
inline int64_t onednn_min() {
  static const int64_t v = [] {
    const char* e = std::getenv("FASTRNN_ONEDNN_MIN");
    return e ? std::atoll(e) : (int64_t(1) << 22);
  }();
  return v;
}
//
// The bits must not depend on the thread count. oneDNN's matmul (brgemm on AVX-512 and
// AVX2) sums each output over K in the same blocks whatever the threads, except where its
// blocking splits K between threads: for float32, when K >= 20000 with M and N both <= 512
// (it also does so for a transposed A with K >= 2048, which fastrnn never passes), and in
// its plain-GEMM fallback for outputs narrower than a few vectors (seen at 2 threads for a
// 1 x 4 output with K = 6400). Those products stay off oneDNN whatever the thread count
// (the choice never depends on it, or the route itself would).
template <typename T>
inline bool use_onednn(int64_t M, int64_t K, int64_t N) {
  if (!std::is_same_v<T, float> || onednn_min() <= 0 || M * K * N < onednn_min()) return false;
  if (N < 64 || (K >= 20000 && M <= 512 && N <= 512)) return false;
  return OneDnn::usable();
}

// A layer's input projection x (R x K) @ w^T (w: N x K) + b, and its input gradient
// dy (R x N) @ w: oneDNN where use_onednn takes the product, else torch's addmm / mm. The
// Python route (fastrnn._cpp.linear) and the inference stack (stack.cpp) both call these,
// so the two give the same bits.
inline at::Tensor input_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  if (x.scalar_type() == at::kFloat && use_onednn<float>(x.size(0), x.size(1), w.size(0)))
    return OneDnn::mm(x.contiguous(), w.contiguous(), b);
  return b ? at::addmm(*b, x, w.t()) : at::mm(x, w.t());
}
inline at::Tensor input_linear_dx(const at::Tensor& dy, const at::Tensor& w) {
  if (dy.scalar_type() == at::kFloat && use_onednn<float>(dy.size(0), dy.size(1), w.size(1)))
    return OneDnn::mm(dy.contiguous(), w.t().contiguous());
  return at::mm(dy, w);
}

// A weight's gradient dy^T x (G x I) over all R rows (dy: R x G, x: R x I). On oneDNN as
// (x^T dy)^T, with dy read in place as the product's weight (reordered by oneDNN itself):
// at (R, I, G) = (6400, 512, 2048) 34 ms against MKL's 64 on the Zen 5 VM here, and 0.23 ms
// against 0.33 at (800, 64, 512). Only where x^T is the narrower copy (I <= G): copying
// a wide x^T cost more than the product saved; and only for outputs of 8 64 x 64 blocks or
// more: into a smaller output (a long sum), MKL was faster, (792, 128, 128) 145 us against 185.
inline at::Tensor weight_grad(const at::Tensor& dy, const at::Tensor& x) {
  const int64_t R = dy.size(0), G = dy.size(1), I = x.size(1);
  const bool wide = ((I + 63) / 64) * ((G + 63) / 64) >= 8;
  if (dy.scalar_type() == at::kFloat && I <= G && wide && use_onednn<float>(I, R, G))
    return OneDnn::mm(x.t().contiguous(), dy.contiguous().t()).t().contiguous();
  return at::mm(dy.t(), x);
}

// The projection of an inference stack taken a chunk of steps at a time (stack.cpp): w
// packed once for chunks of `rows` rows where oneDNN takes them.
struct ChunkLinear {
  at::Tensor w, packed;
  c10::optional<at::Tensor> b;
  ChunkLinear(const at::Tensor& w_nk, const c10::optional<at::Tensor>& bias, int64_t rows) : w(w_nk), b(bias) {
    if (w.scalar_type() == at::kFloat && use_onednn<float>(rows, w.size(1), w.size(0)))
      packed = OneDnn::pack(w.contiguous(), rows);
  }
  at::Tensor operator()(const at::Tensor& x) const {
    return packed.defined() ? OneDnn::mm(x.contiguous(), packed, b) : input_linear(x, w, b);
  }
};

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

// W (K x N) packed for oneDNN's M-row products, or undefined where oneDNN does not take them.
template <typename T>
at::Tensor step_pack(const at::Tensor& w_kn, int64_t M) {
  return use_onednn<T>(M, w_kn.size(0), w_kn.size(1)) ? OneDnn::pack(w_kn.t().contiguous(), M) : at::Tensor();
}

// The per-step product C += A @ W with the choice above. W (K x N) may be a transposed
// view: BLAS takes it as is, the kernel gets a row-major copy made once per call.
// acc<Isa> runs the kernel instance of the ISA the calling loop was compiled for.
template <typename T>
struct StepGemm {
  at::Tensor w;   // K x N view for BLAS
  at::Tensor wc;  // K x N row-major copy for the kernel (owned: wp points into it)
  at::Tensor wd;  // W^T packed for oneDNN, or undefined
  const T* wp;
  int64_t K, N;
  bool blas;
  // packed: step_pack(w_kn, M) made once for several loops over the same weights, or
  // undefined to pack here where oneDNN takes the product.
  StepGemm(const at::Tensor& w_kn, int64_t M, const at::Tensor& packed = {})
      : w(w_kn), K(w_kn.size(0)), N(w_kn.size(1)), blas(use_blas(M, w_kn.size(0), w_kn.size(1))) {
    wd = packed.defined() ? packed : step_pack<T>(w_kn, M);
    blas = blas || wd.defined();
    wc = blas ? w_kn : row_major_copy<T>(w_kn);
    wp = blas ? nullptr : wc.data_ptr<T>();
  }
  // C[0:M] += A[0:M] @ W ; A with row stride lda, C with row stride ldc.
  template <class Isa>
  FASTRNN_INLINE void acc(int64_t M, const T* A, int64_t lda, T* C, int64_t ldc) const {
    if (M == 0) return;
    if (blas)
      blas_acc(M, A, lda, C, ldc);
    else
      Isa::template gemm<T>(M, K, N, A, lda, wp, N, C, ldc);
  }
  __attribute__((noinline)) void blas_acc(int64_t M, const T* A, int64_t lda, T* C, int64_t ldc) const {
    auto opts = w.options();
    auto a = torch::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
    auto c = torch::from_blob(C, {M, N}, {ldc, 1}, opts);
    if (wd.defined())
      c.add_(OneDnn::mm(a, wd));
    else
      c.addmm_(a, w);
  }
};

}  // namespace fastrnn
