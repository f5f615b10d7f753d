// One step of a torch.nn cell (LSTMCell, GRUCell, RNNCell) in one call, forward and backward.
// A cell is stepped from Python once per time step, so what counts is the cost per call: the
// sequence machinery (input projection in Python, the time loop with T = 1, a row-major copy of
// W_hh^T for the step kernel made on every call) cost 2-3x torch.nn's cell per step. Here both
// gate products go to torch's BLAS (at::addmm takes W transposed as it is stored: no copy),
// exactly as torch.nn computes them (gi = x W_ih^T + b_ih, gh = h W_hh^T + b_hh, separately),
// and the pointwise math is cells.h's, compiled per ISA level like the time loops.
#pragma once

#include <torch/extension.h>

#include <vector>

#include "recurrence.h"

namespace fastrnn {

// Forward rows: gi and gh (B, GATES*H) -> h (B, H), c (B, H) with HAS_C, ws (B, workspace(H)).
// Cells that take x inside the product (LSTM, RNN) see pre = gi + gh, summed here into ws (the
// LSTM works in place there) or into gi; the GRU takes gi and gh apart (r scales gh's n part).
template <class Cell>
FASTRNN_INLINE void cell_rows_forward(const Cell& cell, int64_t B, int64_t H, typename Cell::Scalar* gi,
                                      const typename Cell::Scalar* gh, const typename Cell::Scalar* h_prev,
                                      const typename Cell::Scalar* c_prev, typename Cell::Scalar* ws,
                                      typename Cell::Scalar* c, typename Cell::Scalar* h) {
  using T = typename Cell::Scalar;
  const int64_t GH = Cell::GATES * H, WH = Cell::workspace(H);
  for (int64_t b = 0; b < B; ++b) {
    T* gib = gi + b * GH;
    const T* ghb = gh + b * GH;
    T* wsb = row(ws, b, WH);
    if constexpr (Cell::X_IN_PRODUCT) {
      T* pre = Cell::IN_PLACE ? wsb : gib;
      for (int64_t j = 0; j < GH; ++j) pre[j] = gib[j] + ghb[j];
      cell.forward(H, pre, gib, h_prev + b * H, row(c_prev, b, H), wsb, row(c, b, H), h + b * H);
    } else {
      cell.forward(H, ghb, gib, h_prev + b * H, row(c_prev, b, H), wsb, row(c, b, H), h + b * H);
    }
  }
}

// Backward rows: dh (B, H), dc (B, H) with HAS_C (in: from the next step, out: to c_prev) ->
// dgi (B, GATES*H), the gradient of gi; dgh, of gh, without X_IN_PRODUCT (otherwise it is dgi);
// dh_direct (B, H), the part of dh_prev that does not pass through gh (GRU), zero otherwise.
template <class Cell>
FASTRNN_INLINE void cell_rows_backward(const Cell& cell, int64_t B, int64_t H, const typename Cell::Scalar* saved,
                                       const typename Cell::Scalar* c, const typename Cell::Scalar* c_prev,
                                       const typename Cell::Scalar* h_prev, const typename Cell::Scalar* dh,
                                       typename Cell::Scalar* dc, typename Cell::Scalar* dgi,
                                       typename Cell::Scalar* dgh, typename Cell::Scalar* dh_direct) {
  using T = typename Cell::Scalar;
  const int64_t GH = Cell::GATES * H, SH = Cell::saved(H);
  T* sums[1] = {nullptr};
  for (int64_t b = 0; b < B; ++b) {
    cell.backward(H, saved + b * SH, row(c, b, H), row(c_prev, b, H), row(h_prev, b, H), dh + b * H, row(dc, b, H),
                  sums, dgi + b * GH, Cell::X_IN_PRODUCT ? nullptr : dgh + b * GH, dh_direct + b * H);
  }
}

// ---------------------------------------------------------------------------------------
// Small products in the layout the weights are stored in. A cell's W (N x K) is row-major with
// K contiguous, so x W^T is a set of dot products; torch's BLAS serves it without a copy, but
// costs ~3.5 us a call at B=1, H=64 (fp32, 1 thread), about 10x the arithmetic, and a cell step
// makes six such products. Below use_kernel's bound the step runs these kernels instead.
// ---------------------------------------------------------------------------------------
// Lanes summed as a tree of halves, in a fixed order: the same sum whatever the block shape.
template <typename T>
FASTRNN_INLINE T hsum(typename Vec64<T>::type v) {
  typedef T V32 __attribute__((vector_size(32)));
  typedef T V16 __attribute__((vector_size(16)));
  V32 a, b;
  std::memcpy(&a, &v, 32);
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + 32, 32);
  a += b;
  V16 c, d;
  std::memcpy(&c, &a, 16);
  std::memcpy(&d, reinterpret_cast<const char*>(&a) + 16, 16);
  c += d;
  T s = T(0);
  for (int i = 0; i < int(16 / sizeof(T)); ++i) s += c[i];
  return s;
}

// C[m, n] = bias[n] + sum_k A[m, k] W[n, k] for RM rows of A and RN rows of W: RM x RN vector
// accumulators over K, reduced once at the end; the product is summed from zero and the bias
// added last, as BLAS's addmm does.
template <typename T, int RM, int RN>
FASTRNN_INLINE void dot_block(int64_t K, const T* A, int64_t lda, const T* W, int64_t ldw, const T* bias, T* C,
                              int64_t ldc) {
  typedef typename Vec64<T>::type V;
  constexpr int64_t VN = sizeof(V) / sizeof(T);
  V acc[RM][RN];
  for (int m = 0; m < RM; ++m)
    for (int n = 0; n < RN; ++n) acc[m][n] = V{};
  int64_t k = 0;
  for (; k + VN <= K; k += VN) {
    V w[RN];
    for (int n = 0; n < RN; ++n) w[n] = vload<T>(W + n * ldw + k);
    for (int m = 0; m < RM; ++m) {
      const V a = vload<T>(A + m * lda + k);
      for (int n = 0; n < RN; ++n) acc[m][n] += a * w[n];
    }
  }
  for (int m = 0; m < RM; ++m)
    for (int n = 0; n < RN; ++n) {
      T s = hsum<T>(acc[m][n]);
      for (int64_t j = k; j < K; ++j) s += A[m * lda + j] * W[n * ldw + j];
      C[m * ldc + n] = bias ? bias[n] + s : s;
    }
}

template <typename T, int RM, int RN>
FASTRNN_INLINE void dot_rows(int64_t m, int64_t K, int64_t N, const T* A, int64_t lda, const T* W, int64_t ldw,
                             const T* bias, T* C, int64_t ldc) {
  int64_t n = 0;
  for (; n + RN <= N; n += RN)
    dot_block<T, RM, RN>(K, A + m * lda, lda, W + n * ldw, ldw, bias ? bias + n : nullptr, C + m * ldc + n, ldc);
  for (; n < N; ++n)
    dot_block<T, RM, 1>(K, A + m * lda, lda, W + n * ldw, ldw, bias ? bias + n : nullptr, C + m * ldc + n, ldc);
}

// C (M x N) = A (M x K) W^T (+ bias), W (N x K); RM x RN blocks (RM*RN + RN + 1 vectors live).
template <typename T, int RM, int RN>
FASTRNN_INLINE void dot_product(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda, const T* W, int64_t ldw,
                                const T* bias, T* C, int64_t ldc) {
  int64_t m = 0;
  for (; m + RM <= M; m += RM) dot_rows<T, RM, RN>(m, K, N, A, lda, W, ldw, bias, C, ldc);
  for (; m < M; ++m) dot_rows<T, 1, RN>(m, K, N, A, lda, W, ldw, bias, C, ldc);
}

// The kernels win while the product is small: at B=1, H=64 a step's six products took ~1 us in
// all against ~20 us through at::addmm/at::mm. BLAS (threaded, cache-blocked) takes over at
// the time loops' crossover, and earlier when N is not a whole number of vectors: gemm_acc
// runs the last N % (vector width) columns as scalar loops, which cost time_sequence_prediction's
// cell backward (B=97, H=51, float64: 3 such columns of 51) more than BLAS's whole product.
template <typename T>
bool use_kernel(int64_t M, int64_t K, int64_t N) {
  constexpr int64_t VN = 64 / sizeof(T);
  return M * K * N <= (int64_t(1) << 18) || (N % VN == 0 && !use_blas(M, K, N));
}

// The dot kernel pays a lane reduction and a scalar K tail per output, ~10 operations against
// K / (vector width) FMAs: it keeps the small products (BLAS's ~3.5 us a call is then the larger
// cost) and the long ones (K of 12 vectors or more). In between it lost: time_sequence_prediction's
// cells (B=97, K=51, N=204, float64) stepped at 0.63x torch.nn's through it, one thread.
template <typename T>
bool use_dot(int64_t M, int64_t K, int64_t N) {
  constexpr int64_t VN = 64 / sizeof(T);
  return M * K * N <= (int64_t(1) << 18) || (!use_blas(M, K, N) && K >= 12 * VN);
}

#define FASTRNN_DEFINE_CELL_ROWS(NAME, TARGET, SHAPE, RM, RN)                                                        \
  struct NAME {                                                                                                      \
    template <typename T>                                                                                            \
    TARGET __attribute__((noinline)) static void dot(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda,       \
                                                     const T* W, int64_t ldw, const T* bias, T* C, int64_t ldc) {    \
      dot_product<T, RM, RN>(M, K, N, A, lda, W, ldw, bias, C, ldc);                                                 \
    }                                                                                                                \
    template <typename T>                                                                                            \
    TARGET __attribute__((noinline)) static void gemm(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda,      \
                                                      const T* W, int64_t ldw, T* C, int64_t ldc) {                  \
      gemm_acc<T, SHAPE>(M, K, N, A, lda, W, ldw, C, ldc);                                                           \
    }                                                                                                                \
    template <typename T>                                                                                            \
    TARGET __attribute__((noinline)) static void gemm_set(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda,  \
                                                          const T* W, int64_t ldw, T* C, int64_t ldc) {              \
      gemm_acc<T, SHAPE, false>(M, K, N, A, lda, W, ldw, C, ldc);                                                    \
    }                                                                                                                \
    template <class Cell, class T = typename Cell::Scalar>                                                           \
    TARGET static void forward(const Cell& cell, int64_t B, int64_t H, T* gi, const T* gh, const T* h_prev,          \
                               const T* c_prev, T* ws, T* c, T* h) {                                                 \
      cell_rows_forward(cell, B, H, gi, gh, h_prev, c_prev, ws, c, h);                                               \
    }                                                                                                                \
    template <class Cell, class T = typename Cell::Scalar>                                                           \
    TARGET static void backward(const Cell& cell, int64_t B, int64_t H, const T* saved, const T* c, const T* c_prev, \
                                const T* h_prev, const T* dh, T* dc, T* dgi, T* dgh, T* dh_direct) {                 \
      cell_rows_backward(cell, B, H, saved, c, c_prev, h_prev, dh, dc, dgi, dgh, dh_direct);                         \
    }                                                                                                                \
  };

#if FASTRNN_X86_ISAS
// dot blocks: 4 x 4 takes 21 of AVX-512's 32 registers; 2 x 2 with 64-byte vectors is 14 of
// AVX2's 16 (and of SSE's 16 xmm, in pairs)
FASTRNN_DEFINE_CELL_ROWS(CellRowsAvx512, FASTRNN_TARGET("arch=x86-64-v4"), GemmShapeAvx512, 4, 4)
FASTRNN_DEFINE_CELL_ROWS(CellRowsAvx2, FASTRNN_TARGET("arch=x86-64-v3"), GemmShapeAvx2, 2, 2)
#endif
FASTRNN_DEFINE_CELL_ROWS(CellRowsBaseline, , GemmShapeBaseline, 2, 2)

template <class Cell, class T = typename Cell::Scalar>
void run_cell_rows_forward(const Cell& cell, int64_t B, int64_t H, T* gi, const T* gh, const T* h_prev, const T* c_prev,
                           T* ws, T* c, T* h) {
  using Fn = void (*)(const Cell&, int64_t, int64_t, T*, const T*, const T*, const T*, T*, T*, T*);
#if FASTRNN_X86_ISAS
  static const Fn fn =
      pick_isa<Fn>(&CellRowsAvx512::forward<Cell>, &CellRowsAvx2::forward<Cell>, &CellRowsBaseline::forward<Cell>);
#else
  static const Fn fn = &CellRowsBaseline::forward<Cell>;
#endif
  fn(cell, B, H, gi, gh, h_prev, c_prev, ws, c, h);
}

template <class Cell, class T = typename Cell::Scalar>
void run_cell_rows_backward(const Cell& cell, int64_t B, int64_t H, const T* saved, const T* c, const T* c_prev,
                            const T* h_prev, const T* dh, T* dc, T* dgi, T* dgh, T* dh_direct) {
  using Fn = void (*)(const Cell&, int64_t, int64_t, const T*, const T*, const T*, const T*, const T*, T*, T*, T*, T*);
#if FASTRNN_X86_ISAS
  static const Fn fn =
      pick_isa<Fn>(&CellRowsAvx512::backward<Cell>, &CellRowsAvx2::backward<Cell>, &CellRowsBaseline::backward<Cell>);
#else
  static const Fn fn = &CellRowsBaseline::backward<Cell>;
#endif
  fn(cell, B, H, saved, c, c_prev, h_prev, dh, dc, dgi, dgh, dh_direct);
}

template <typename T>
void run_dot(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda, const T* W, int64_t ldw, const T* bias, T* C,
             int64_t ldc) {
  using Fn = void (*)(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, const T*, T*, int64_t);
#if FASTRNN_X86_ISAS
  static const Fn fn = pick_isa<Fn>(&CellRowsAvx512::dot<T>, &CellRowsAvx2::dot<T>, &CellRowsBaseline::dot<T>);
#else
  static const Fn fn = &CellRowsBaseline::dot<T>;
#endif
  fn(M, K, N, A, lda, W, ldw, bias, C, ldc);
}

// C += A @ W, or with add = false C = A @ W (C need not be initialised).
template <typename T>
void run_gemm(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda, const T* W, int64_t ldw, T* C, int64_t ldc,
              bool add = true) {
  using Fn = void (*)(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t);
#if FASTRNN_X86_ISAS
  static const Fn acc = pick_isa<Fn>(&CellRowsAvx512::gemm<T>, &CellRowsAvx2::gemm<T>, &CellRowsBaseline::gemm<T>);
  static const Fn set =
      pick_isa<Fn>(&CellRowsAvx512::gemm_set<T>, &CellRowsAvx2::gemm_set<T>, &CellRowsBaseline::gemm_set<T>);
#else
  static const Fn acc = &CellRowsBaseline::gemm<T>;
  static const Fn set = &CellRowsBaseline::gemm_set<T>;
#endif
  (add ? acc : set)(M, K, N, A, lda, W, ldw, C, ldc);
}

// gi = x W_ih^T + b_ih, gh = h W_hh^T + b_hh: torch.nn's two products, summed apart as it
// sums them. a contiguous.
template <typename T>
at::Tensor gate_product(const at::Tensor& a, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  const int64_t M = a.size(0), K = a.size(1), N = w.size(0);
  if (!use_dot<T>(M, K, N)) return b ? at::addmm(*b, a, w.t()) : at::mm(a, w.t());
  auto out = fresh({M, N}, a.options());
  const auto wc = w.contiguous();
  const auto bc = b ? b->contiguous() : at::Tensor();
  run_dot<T>(M, K, N, a.data_ptr<T>(), K, wc.data_ptr<T>(), K, b ? bc.data_ptr<T>() : nullptr, out.data_ptr<T>(), N);
  return out;
}

// init + g W, W (K x N) as stored (row-major): the gradient reaching a product's input.
template <typename T>
at::Tensor times(const at::Tensor& g, const at::Tensor& w, const at::Tensor* init) {
  const int64_t M = g.size(0), K = g.size(1), N = w.size(1);
  if (!use_kernel<T>(M, K, N)) return init ? at::addmm(*init, g, w) : at::mm(g, w);
  auto out = init ? init->clone() : fresh({M, N}, g.options());
  const auto wc = w.contiguous();
  run_gemm<T>(M, K, N, g.data_ptr<T>(), K, wc.data_ptr<T>(), N, out.data_ptr<T>(), N, init != nullptr);
  return out;
}

// g^T a, g (B x N), a (B x K) contiguous: a weight's gradient, summed over the batch rows.
template <typename T>
at::Tensor batch_outer(const at::Tensor& g, const at::Tensor& a) {
  const int64_t B = g.size(0), M = g.size(1), N = a.size(1);
  if (!use_kernel<T>(M, B, N)) return at::mm(g.t(), a);
  const auto gt = g.t().contiguous();
  auto out = fresh({M, N}, g.options());  // written whole (no zero fill: a 1 MB fill cost ~35 us at H=256)
  run_gemm<T>(M, B, N, gt.data_ptr<T>(), B, a.data_ptr<T>(), N, out.data_ptr<T>(), N, false);
  return out;
}

// Column sums of g (B x N), row after row: a bias's gradient.
template <typename T>
at::Tensor column_sums(const at::Tensor& g) {
  const int64_t B = g.size(0), N = g.size(1);
  if (!use_kernel<T>(B, 1, N)) return g.sum(0);
  auto out = at::zeros({N}, g.options());
  T* o = out.data_ptr<T>();
  const T* p = g.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n) o[n] += p[b * N + n];
  return out;
}

// -> h (B, H), [c (B, H)], ws (B, workspace(H)) or (0,) without `workspace`, for RNN the saved
// row is h itself. Arguments checked by the caller; x, h_prev, c_prev contiguous.
template <class Cell>
std::vector<at::Tensor> cell_step_forward(const Cell& cell, const at::Tensor& x, const at::Tensor& h_prev,
                                          const at::Tensor* c_prev, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                          const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                          bool workspace) {
  using T = typename Cell::Scalar;
  const int64_t B = x.size(0), H = h_prev.size(1);
  auto gi = gate_product<T>(x, w_ih, b_ih);
  auto gh = gate_product<T>(h_prev, w_hh, b_hh);
  const auto opts = x.options();
  auto h = fresh({B, H}, opts);
  at::Tensor c, ws;
  if (Cell::HAS_C) c = fresh({B, H}, opts);
  constexpr bool has_ws = Cell::workspace(1) > 0;
  // the LSTM's workspace is where it sums pre; the GRU needs its acts row even without a backward
  if (has_ws) ws = fresh({B, Cell::workspace(H)}, opts);
  run_cell_rows_forward(cell, B, H, gi.template data_ptr<T>(), gh.template data_ptr<T>(), h_prev.template data_ptr<T>(),
                        c_prev ? c_prev->template data_ptr<T>() : nullptr, has_ws ? ws.template data_ptr<T>() : nullptr,
                        Cell::HAS_C ? c.template data_ptr<T>() : nullptr, h.template data_ptr<T>());
  std::vector<at::Tensor> out{h};
  if (Cell::HAS_C) out.push_back(c);
  out.push_back(workspace && has_ws ? ws : at::empty({0}, opts));
  return out;
}

// need: which of (dx, dh_prev, dW_ih, dW_hh, db_ih, db_hh) to compute (the rest come back
// undefined: None). -> dx, dh_prev, [dc_prev], dW_ih, dW_hh, db_ih, db_hh.
template <class Cell>
std::vector<at::Tensor> cell_step_backward(const Cell& cell, const at::Tensor& dh, const at::Tensor* dc,
                                           const at::Tensor& x, const at::Tensor& h_prev, const at::Tensor* c_prev,
                                           const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& saved,
                                           const at::Tensor* c, const std::vector<bool>& need) {
  using T = typename Cell::Scalar;
  const int64_t B = x.size(0), H = h_prev.size(1), GH = Cell::GATES * H;
  const auto opts = x.options();
  auto dgi = fresh({B, GH}, opts);
  at::Tensor dgh = Cell::X_IN_PRODUCT ? dgi : fresh({B, GH}, opts);
  auto dh_direct = at::zeros({B, H}, opts);
  at::Tensor dc_prev;
  if (Cell::HAS_C) dc_prev = dc->clone();
  run_cell_rows_backward(cell, B, H, saved.template data_ptr<T>(), c ? c->template data_ptr<T>() : nullptr,
                         c_prev ? c_prev->template data_ptr<T>() : nullptr, h_prev.template data_ptr<T>(),
                         dh.template data_ptr<T>(), Cell::HAS_C ? dc_prev.template data_ptr<T>() : nullptr,
                         dgi.template data_ptr<T>(), dgh.template data_ptr<T>(), dh_direct.template data_ptr<T>());
  std::vector<at::Tensor> out;
  out.push_back(need[0] ? times<T>(dgi, w_ih, nullptr) : at::Tensor());
  out.push_back(need[1] ? times<T>(dgh, w_hh, Cell::H_DIRECT ? &dh_direct : nullptr) : at::Tensor());
  if (Cell::HAS_C) out.push_back(dc_prev);
  out.push_back(need[2] ? batch_outer<T>(dgi, x) : at::Tensor());
  out.push_back(need[3] ? batch_outer<T>(dgh, h_prev) : at::Tensor());
  out.push_back(need[4] ? column_sums<T>(dgi) : at::Tensor());
  out.push_back(need[5] ? column_sums<T>(dgh) : at::Tensor());
  return out;
}

}  // namespace fastrnn
