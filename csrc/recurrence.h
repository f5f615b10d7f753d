// The time loop of the C++ backend, written once for every cell of cells.h: step order,
// lengths masking, the carried states, the per-step products and the LSTM's optional output
// projection. Forward and backward stop at the loop: the weight gradients (dW_hh = dgates^T
// h_prev as one GEMM over all T*B rows, dW_hr, db_hn) are computed after it, outside the
// backend. Nothing depends on thread timing: results are bitwise reproducible run to run.
#pragma once

#include <ATen/record_function.h>
#include <torch/extension.h>

#include <algorithm>
#include <vector>

#include "cells.h"
#include "gemm.h"

namespace fastrnn {

// Step order: step s runs time index t.
FASTRNN_INLINE int64_t step_at(int64_t s, int64_t steps, bool reverse) { return reverse ? steps - 1 - s : s; }

FASTRNN_INLINE bool active(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// Row i of a (rows, width) buffer; null stays null (a buffer the cell does not have).
template <typename P>
FASTRNN_INLINE P* row(P* base, int64_t i, int64_t width) {
  return base ? base + i * width : nullptr;
}

// One forward call's buffers, all (T, B, ...) time-major and contiguous except x_proj, whose
// (t, b) rows are contiguous with strides sx0, sx1.
template <typename T>
struct ForwardArgs {
  int64_t steps, B, H, P;  // P: width of h (proj_size, or H)
  const T* x;              // x_proj (T, B, GATES*H)
  int64_t sx0, sx1;
  const T* c0;              // (B, H) with HAS_C
  const int64_t* lengths;   // (B) or null
  bool reverse, workspace;  // workspace: keep every step's ws and cs for a backward
  const StepGemm<T>* rec;   // W_hh^T (P x GATES*H)
  const StepGemm<T>* proj;  // W_hr^T (H x P), or null
  T* y;                     // (T, B, P)
  T* h;                     // (B, P): h0 in, h_n out
  T* c_n;                   // (B, H) with HAS_C
  T* ws;                    // (T or 1, B, workspace(H))
  T* cs;                    // (T or 2, B, H) with HAS_C: the carried c of every step
  T* pre;                   // scratch (B, GATES*H) unless IN_PLACE
  T* m;                     // scratch (B, H) with a projection
};

// Inactive rows keep their state and write y = 0 and zero workspace rows.
template <class Cell, class Isa>
FASTRNN_INLINE void forward_loop(const Cell& cell, const ForwardArgs<typename Cell::Scalar>& a) {
  using T = typename Cell::Scalar;
  const int64_t B = a.B, H = a.H, P = a.P, GH = Cell::GATES * H, WH = Cell::workspace(H);
  static_assert(!Cell::IN_PLACE || (Cell::workspace(1) == Cell::GATES && Cell::workspace(2) == 2 * Cell::GATES),
                "IN_PLACE: the workspace row is the pre row");
  const int64_t* L = a.lengths;
  const T* c_prev = a.c0;
  for (int64_t s = 0; s < a.steps; ++s) {
    const int64_t t = step_at(s, a.steps, a.reverse);
    const T* x_t = a.x + t * a.sx0;
    T* ws = row(a.ws, a.workspace ? t : 0, B * WH);
    T* pre_t = Cell::IN_PLACE ? ws : a.pre;
    for (int64_t b = 0; b < B; ++b) {
      T* pre = pre_t + b * GH;
      if (Cell::X_IN_PRODUCT)
        std::copy(x_t + b * a.sx1, x_t + b * a.sx1 + GH, pre);
      else
        std::fill(pre, pre + GH, T(0));
    }
    a.rec->template acc<Isa>(B, a.h, P, pre_t, GH);
    T* c = row(a.cs, a.workspace ? t : s % 2, B * H);
    T* y_t = a.y + t * B * P;
    T* out = a.proj ? a.m : y_t;  // rows of width H (P = H without a projection)
    for (int64_t b = 0; b < B; ++b) {
      if (active(L, t, b)) {
        cell.forward(H, pre_t + b * GH, x_t + b * a.sx1, a.h + b * P, row(c_prev, b, H), row(ws, b, WH), row(c, b, H),
                     out + b * H);
      } else {  // state carried; the workspace row is zeroed so every output is defined
        if (WH > 0) std::fill(ws + b * WH, ws + (b + 1) * WH, T(0));
        if constexpr (Cell::HAS_C) std::copy(c_prev + b * H, c_prev + (b + 1) * H, c + b * H);
      }
    }
    if (a.proj) {
      std::fill(y_t, y_t + B * P, T(0));
      a.proj->template acc<Isa>(B, a.m, H, y_t, P);
    }
    for (int64_t b = 0; b < B; ++b) {
      if (active(L, t, b))
        std::copy(y_t + b * P, y_t + (b + 1) * P, a.h + b * P);
      else
        std::fill(y_t + b * P, y_t + (b + 1) * P, T(0));
    }
    c_prev = c;
  }
  if constexpr (Cell::HAS_C) std::copy(c_prev, c_prev + B * H, a.c_n);
}

template <typename T>
struct BackwardArgs {
  int64_t steps, B, H, P;
  const T* dy;      // (T, B, P)
  const T* saved;   // (T, B, saved(H)): the forward's workspace (RNN: y)
  const T* cs;      // (T, B, H) with HAS_C
  const T* c0;      // (B, H) with HAS_C
  const T* h_prev;  // (T, B, H) with H_DIRECT: the state each step started from
  const int64_t* lengths;
  bool reverse;
  const StepGemm<T>* rec;   // W_hh (GATES*H x P)
  const StepGemm<T>* proj;  // W_hr (P x H), or null
  T* dx;                    // (T, B, GATES*H): dx_proj
  T* dh;                    // (B, P): dh_n in, dh0 out
  T* dc;                    // (B, H) with HAS_C: dc_n in, dc0 out
  T* dh_out;                // (T, B, P) with a projection: the gradient reaching h_t
  T* sums[4];               // STEP_SUMS tensors (T, step_sum(k, H)): per-step sums over the active rows
  T* dht;                   // scratch (B, P)
  T* dhnew;                 // scratch (B, P)
  T* dm;                    // scratch (B, H) with a projection
  T* dgh;                   // without X_IN_PRODUCT: scratch (B, GATES*H), or (T, B, GATES*H) with DGH_OUT
};

// Reverse time. Inactive rows write zero dx (and dgh) rows, add nothing to the step's sums
// and carry dh, dc through.
template <class Cell, class Isa>
FASTRNN_INLINE void backward_loop(const Cell& cell, const BackwardArgs<typename Cell::Scalar>& a) {
  using T = typename Cell::Scalar;
  const int64_t B = a.B, H = a.H, P = a.P, GH = Cell::GATES * H, SH = Cell::saved(H);
  static_assert(Cell::STEP_SUMS <= 4, "BackwardArgs::sums holds 4");
  const int64_t* L = a.lengths;
  for (int64_t s = a.steps - 1; s >= 0; --s) {
    const int64_t t = step_at(s, a.steps, a.reverse);
    const int64_t p = s > 0 ? step_at(s - 1, a.steps, a.reverse) : -1;
    const T* c_prev = p < 0 ? a.c0 : row(a.cs, p, B * H);
    const T* dy_t = a.dy + t * B * P;
    for (int64_t i = 0; i < B * P; ++i) a.dht[i] = a.dh[i] + dy_t[i];
    const T* dout = a.dht;  // rows of width H (P = H without a projection)
    if (a.proj) {
      T* o = a.dh_out + t * B * P;
      for (int64_t b = 0; b < B; ++b) {
        if (active(L, t, b))
          std::copy(a.dht + b * P, a.dht + (b + 1) * P, o + b * P);
        else
          std::fill(o + b * P, o + (b + 1) * P, T(0));
      }
      std::fill(a.dm, a.dm + B * H, T(0));
      a.proj->template acc<Isa>(B, a.dht, P, a.dm, H);
      dout = a.dm;
    }
    T* dx_t = a.dx + t * B * GH;
    // operand of the product's backward
    T* dg = Cell::X_IN_PRODUCT ? dx_t : Cell::DGH_OUT ? a.dgh + t * B * GH : a.dgh;
    T* sums[Cell::STEP_SUMS > 0 ? Cell::STEP_SUMS : 1] = {};
    for (int k = 0; k < Cell::STEP_SUMS; ++k) {
      const int64_t w = Cell::step_sum(k, H);
      sums[k] = a.sums[k] + t * w;
      std::fill(sums[k], sums[k] + w, T(0));
    }
    if (!Cell::H_DIRECT) std::fill(a.dhnew, a.dhnew + B * P, T(0));
    for (int64_t b = 0; b < B; ++b) {
      const int64_t tb = t * B + b;
      if (active(L, t, b)) {
        cell.backward(H, a.saved + tb * SH, row(a.cs, tb, H), row(c_prev, b, H), row(a.h_prev, tb, H), dout + b * H,
                      row(a.dc, b, H), sums, dx_t + b * GH, Cell::X_IN_PRODUCT ? nullptr : dg + b * GH,
                      a.dhnew + b * P);
      } else {
        std::fill(dx_t + b * GH, dx_t + (b + 1) * GH, T(0));
        if (!Cell::X_IN_PRODUCT) std::fill(dg + b * GH, dg + (b + 1) * GH, T(0));
      }
    }
    a.rec->template acc<Isa>(B, dg, GH, a.dhnew, P);
    for (int64_t b = 0; b < B; ++b) {
      if (active(L, t, b)) std::copy(a.dhnew + b * P, a.dhnew + (b + 1) * P, a.dh + b * P);
    }
  }
}

// ---------------------------------------------------------------------------------------
// ISA dispatch: the only one in the backend. Each whole loop (above) is instantiated once per
// ISA level inside a function with that target attribute; the cell math is always inlined
// into it, the GEMM block loops into that level's gemm function, so all of them are compiled
// for that ISA, and one function pointer per (cell, direction) is chosen from the CPU's
// features on the first call.
// Chosen over target_clones: a clone is picked per cloned function, so each step made one
// indirect call per row loop, and a clone cannot carry a per-ISA constant such as the GEMM
// block shape (which therefore needed a second, hand-written dispatch). One choice per call
// of the whole loop covers both, costs nothing per step, and treats float and double alike.
// Portable: no -march=native; without x86 target attributes only the baseline is built.
// The GEMM kernel stays one function per (ISA, dtype), called by that ISA's loops, rather
// than being inlined into each of the 24 loop instances of an ISA.
// ---------------------------------------------------------------------------------------
#if defined(__x86_64__) && defined(__GNUC__)
#define FASTRNN_X86_ISAS 1
#define FASTRNN_TARGET(t) __attribute__((target(t)))
#else
#define FASTRNN_X86_ISAS 0
#define FASTRNN_TARGET(t)
#endif

#define FASTRNN_DEFINE_ISA(NAME, TARGET, SHAPE)                                                                 \
  struct NAME {                                                                                                 \
    template <typename T>                                                                                       \
    TARGET __attribute__((noinline)) static void gemm(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda, \
                                                      const T* W, int64_t ldw, T* C, int64_t ldc) {             \
      gemm_acc<T, SHAPE>(M, K, N, A, lda, W, ldw, C, ldc);                                                      \
    }                                                                                                           \
    template <class Cell>                                                                                       \
    TARGET static void forward(const Cell& cell, const ForwardArgs<typename Cell::Scalar>& a) {                 \
      forward_loop<Cell, NAME>(cell, a);                                                                        \
    }                                                                                                           \
    template <class Cell>                                                                                       \
    TARGET static void backward(const Cell& cell, const BackwardArgs<typename Cell::Scalar>& a) {               \
      backward_loop<Cell, NAME>(cell, a);                                                                       \
    }                                                                                                           \
  };

#if FASTRNN_X86_ISAS
FASTRNN_DEFINE_ISA(IsaAvx512, FASTRNN_TARGET("arch=x86-64-v4"), GemmShapeAvx512)
FASTRNN_DEFINE_ISA(IsaAvx2, FASTRNN_TARGET("arch=x86-64-v3"), GemmShapeAvx2)
#endif
FASTRNN_DEFINE_ISA(IsaBaseline, , GemmShapeBaseline)

enum class IsaLevel { avx512, avx2, baseline };

// The whole loop is compiled for the level, not only its vector code (the compiler may use
// e.g. BMI2 or MOVBE anywhere in it), so the CPU must have every feature of the level.
inline IsaLevel detect_isa_level() {
#if FASTRNN_X86_ISAS
  __builtin_cpu_init();
#if defined(__clang__)
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
                  __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("lzcnt") &&
                  __builtin_cpu_supports("movbe") && __builtin_cpu_supports("popcnt");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                  __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512cd");
#else
  const bool v3 = __builtin_cpu_supports("x86-64-v3"), v4 = __builtin_cpu_supports("x86-64-v4");
#endif
  if (v4) return IsaLevel::avx512;
  if (v3) return IsaLevel::avx2;
#endif
  return IsaLevel::baseline;
}

template <class Fn>
Fn pick_isa(Fn avx512, Fn avx2, Fn baseline) {
  static const IsaLevel level = detect_isa_level();
  return level == IsaLevel::avx512 ? avx512 : level == IsaLevel::avx2 ? avx2 : baseline;
}

template <class Cell>
void run_forward_loop(const Cell& cell, const ForwardArgs<typename Cell::Scalar>& a) {
  using Fn = void (*)(const Cell&, const ForwardArgs<typename Cell::Scalar>&);
#if FASTRNN_X86_ISAS
  static const Fn fn = pick_isa<Fn>(&IsaAvx512::forward<Cell>, &IsaAvx2::forward<Cell>, &IsaBaseline::forward<Cell>);
#else
  static const Fn fn = &IsaBaseline::forward<Cell>;
#endif
  fn(cell, a);
}

template <class Cell>
void run_backward_loop(const Cell& cell, const BackwardArgs<typename Cell::Scalar>& a) {
  using Fn = void (*)(const Cell&, const BackwardArgs<typename Cell::Scalar>&);
#if FASTRNN_X86_ISAS
  static const Fn fn = pick_isa<Fn>(&IsaAvx512::backward<Cell>, &IsaAvx2::backward<Cell>, &IsaBaseline::backward<Cell>);
#else
  static const Fn fn = &IsaBaseline::backward<Cell>;
#endif
  fn(cell, a);
}

// ---------------------------------------------------------------------------------------
// Buffers around the loops. Arguments are checked and contiguous (bindings.cpp), except
// x_proj, whose rows need only be contiguous.
// ---------------------------------------------------------------------------------------
// -> y (T, B, P), h_n (B, P), [c_n (B, H)], [ws (T, B, workspace(H))], [cs (T, B, H)]
// (the bracketed ones when the cell has them; without the workspace, empty (0,) tensors:
// the loop then keeps one ws slot and two alternating c slots, O(B*H) memory)
template <class Cell>
std::vector<at::Tensor> forward(const Cell& cell, const at::Tensor& x, const at::Tensor& w_hh, const at::Tensor* w_hr,
                                const at::Tensor& h0, const at::Tensor* c0, const int64_t* lengths, bool reverse,
                                bool workspace, const at::Tensor& packed_hh = {}) {
  // a scope for torch.profiler (bench.cpu_table --profile); costs a flag test otherwise
  RECORD_FUNCTION("fastrnn::forward_loop", std::vector<c10::IValue>());
  using T = typename Cell::Scalar;
  const auto opts = x.options();
  const int64_t steps = x.size(0), B = x.size(1), H = x.size(2) / Cell::GATES, P = h0.size(1);
  ForwardArgs<T> a{};
  a.steps = steps;
  a.B = B;
  a.H = H;
  a.P = P;
  a.x = x.data_ptr<T>();
  a.sx0 = x.stride(0);
  a.sx1 = x.stride(1);
  a.lengths = lengths;
  a.reverse = reverse;
  a.workspace = workspace;
  StepGemm<T> rec(w_hh.t(), B, packed_hh);
  c10::optional<StepGemm<T>> proj;
  a.rec = &rec;
  at::Tensor m, c_n, ws, cs;
  if (w_hr) {
    proj.emplace(w_hr->t(), B);
    a.proj = &*proj;
    m = fresh({B, H}, opts);
    a.m = m.data_ptr<T>();
  }
  auto y = fresh({steps, B, P}, opts);
  auto h = h0.clone();
  a.y = y.data_ptr<T>();
  a.h = h.data_ptr<T>();
  at::Tensor pre;
  if (!Cell::IN_PLACE) {
    pre = fresh({B, Cell::GATES * H}, opts);
    a.pre = pre.data_ptr<T>();
  }
  constexpr bool has_ws = Cell::workspace(1) > 0;
  if (has_ws) {
    ws = fresh({workspace ? steps : 1, B, Cell::workspace(H)}, opts);
    a.ws = ws.data_ptr<T>();
  }
  if (Cell::HAS_C) {
    a.c0 = c0->data_ptr<T>();
    cs = fresh({workspace ? steps : 2, B, H}, opts);
    c_n = fresh({B, H}, opts);
    a.cs = cs.data_ptr<T>();
    a.c_n = c_n.data_ptr<T>();
  }
  run_forward_loop(cell, a);
  std::vector<at::Tensor> out{y, h};
  if (Cell::HAS_C) out.push_back(c_n);
  if (has_ws) out.push_back(workspace ? ws : at::empty({0}, opts));
  if (Cell::HAS_C) out.push_back(workspace ? cs : at::empty({0}, opts));
  return out;
}

// -> dx_proj (T, B, GATES*H), dh0 (B, P), [dc0 (B, H)], [dh_out (T, B, P), empty (0,)
// without a projection], [dgh (T, B, GATES*H)], [STEP_SUMS tensors (T, step_sum(k, H))] (the
// bracketed ones when the cell has c, a projection, DGH_OUT, step sums). H: the hidden size the checked
// arguments were derived from.
template <class Cell>
std::vector<at::Tensor> backward(const Cell& cell, int64_t H, const at::Tensor& dy, const at::Tensor& dh_n,
                                 const at::Tensor* dc_n, const at::Tensor& w_hh, const at::Tensor* w_hr,
                                 const at::Tensor* c0, const at::Tensor& saved, const at::Tensor* cs,
                                 const at::Tensor* h_prev, const int64_t* lengths, bool reverse) {
  RECORD_FUNCTION("fastrnn::backward_loop", std::vector<c10::IValue>());
  using T = typename Cell::Scalar;
  const auto opts = dy.options();
  const int64_t steps = saved.size(0), B = saved.size(1), P = dh_n.size(1);
  TORCH_INTERNAL_ASSERT(saved.size(2) == Cell::saved(H));
  const int64_t GH = Cell::GATES * H;
  BackwardArgs<T> a{};
  a.steps = steps;
  a.B = B;
  a.H = H;
  a.P = P;
  a.dy = dy.data_ptr<T>();
  a.saved = saved.data_ptr<T>();
  a.lengths = lengths;
  a.reverse = reverse;
  StepGemm<T> rec(w_hh, B);
  c10::optional<StepGemm<T>> proj;
  a.rec = &rec;
  at::Tensor dm, dh_out = at::empty({0}, opts), dc, dgh;
  std::vector<at::Tensor> sums;
  if (w_hr) {
    proj.emplace(*w_hr, B);
    a.proj = &*proj;
    dm = fresh({B, H}, opts);
    dh_out = fresh({steps, B, P}, opts);
    a.dm = dm.data_ptr<T>();
    a.dh_out = dh_out.data_ptr<T>();
  }
  auto dx = fresh({steps, B, GH}, opts);
  auto dh = dh_n.clone();
  auto dht = fresh({B, P}, opts);
  auto dhnew = fresh({B, P}, opts);
  a.dx = dx.data_ptr<T>();
  a.dh = dh.data_ptr<T>();
  a.dht = dht.data_ptr<T>();
  a.dhnew = dhnew.data_ptr<T>();
  if (Cell::HAS_C) {
    dc = dc_n->clone();
    a.dc = dc.data_ptr<T>();
    a.cs = cs->data_ptr<T>();
    a.c0 = c0->data_ptr<T>();
  }
  if (Cell::H_DIRECT) a.h_prev = h_prev->data_ptr<T>();
  if (!Cell::X_IN_PRODUCT) {
    dgh = Cell::DGH_OUT ? fresh({steps, B, GH}, opts) : fresh({B, GH}, opts);
    a.dgh = dgh.data_ptr<T>();
  }
  for (int k = 0; k < Cell::STEP_SUMS; ++k) {
    sums.push_back(fresh({steps, Cell::step_sum(k, H)}, opts));
    a.sums[k] = sums.back().data_ptr<T>();
  }
  run_backward_loop(cell, a);
  std::vector<at::Tensor> out{dx, dh};
  if (Cell::HAS_C) out.push_back(dc);
  if (Cell::PROJECTION) out.push_back(dh_out);
  if (Cell::DGH_OUT) out.push_back(dgh);
  out.insert(out.end(), sums.begin(), sums.end());
  return out;
}

}  // namespace fastrnn
