// The time loop of the C++ backend, written once for every cell of cells.h: step order,
// lengths masking, the carried states, the per-step products and the LSTM's optional output
// projection. Forward and backward stop at the loop: the weight gradients (dW_hh = dgates^T
// h_prev as one GEMM over all T*B rows, dW_hr, db_hn) are computed after it, outside the
// backend. Nothing depends on thread timing: results are bitwise reproducible run to run,
// and the same whatever the thread count (the threaded loops below split the units, never a
// sum).
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <mutex>
#include <vector>

#include "cells.h"
#include "gemm.h"
#include "pool.h"

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
  T* h_alt;                 // threaded: scratch (B, P), the other half of h's double buffer
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
// Threaded loops: thread tid of nt owns hidden units [j0, j1) (unit_slice) for the whole call.
// Forward, per step: its columns of every gate block of the product (gate g: columns
// g*H + j0 .. g*H + j1), the cell on its units for every batch row, its part of h, y, c and
// the workspace; one barrier (the next product reads all of h). h is double buffered: a
// thread writing step s's h must not overwrite units another thread's product of step s still
// reads. Backward, per step: the cell backward on its units (its slice of dgates), a barrier
// (the product reads every unit's dgates), then its columns of dh_prev = dgates @ W_hh; a
// second barrier only where dgates is a scratch row the next step overwrites (GRU's dgh):
// the LSTM's and RNN's dgates are dx rows, one per step.
// Every element is computed by the same instructions as in the single-threaded loop (the
// product's per-element summation order does not depend on the column blocking, gemm.h; the
// cells' math is per unit), so results are bitwise those of one thread.
// Not threaded: cells without UNIT_SLICES (LayerNorm LSTM: whole-row statistics), calls with a
// projection (a third phase per step, the projection over all units), and products that go
// to BLAS (use_blas).
// ---------------------------------------------------------------------------------------
// Unit slice of thread tid: edges on 64-byte vector multiples, so every slice but the last
// is whole vectors.
template <typename T>
FASTRNN_INLINE void unit_slice(int64_t H, int tid, int nt, int64_t& j0, int64_t& j1) {
  constexpr int64_t VN = 64 / sizeof(T);
  const int64_t nv = (H + VN - 1) / VN;
  j0 = std::min(H, nv * tid / nt * VN);
  j1 = std::min(H, nv * (tid + 1) / nt * VN);
}

template <class Cell, class Isa>
FASTRNN_INLINE void forward_part(const Cell& cell, const ForwardArgs<typename Cell::Scalar>& a, Pool& pool, int tid,
                                 int nt) {  // nt: changes to 1 if the team gives up its threads
  using T = typename Cell::Scalar;
  static_assert(Cell::UNIT_SLICES && Cell::workspace(2) == 2 * Cell::workspace(1), "workspace rows of gate blocks");
  const int64_t B = a.B, H = a.H, GH = Cell::GATES * H, WG = Cell::workspace(1), WH = Cell::workspace(H);
  int64_t j0, j1;
  unit_slice<T>(H, tid, nt, j0, j1);
  int64_t nj = j1 - j0;
  Pool::Member me;
  const int64_t* L = a.lengths;
  const T* c_prev = a.c0;
  T* hb[2] = {a.h, a.h_alt};
  for (int64_t s = 0; s < a.steps; ++s) {
    const int64_t t = step_at(s, a.steps, a.reverse);
    const T* x_t = a.x + t * a.sx0;
    T* ws = row(a.ws, a.workspace ? t : 0, B * WH);
    T* pre_t = Cell::IN_PLACE ? ws : a.pre;
    T* c = row(a.cs, a.workspace ? t : s % 2, B * H);
    const T* hp = hb[s & 1];
    T* hn = hb[(s + 1) & 1];
    T* y_t = a.y + t * B * H;
    if (nj > 0) {
      for (int64_t b = 0; b < B; ++b)
        for (int g = 0; g < Cell::GATES; ++g) {
          T* pre = pre_t + b * GH + g * H;
          if (Cell::X_IN_PRODUCT)
            std::copy(x_t + b * a.sx1 + g * H + j0, x_t + b * a.sx1 + g * H + j1, pre + j0);
          else
            std::fill(pre + j0, pre + j1, T(0));
        }
      for (int g = 0; g < Cell::GATES; ++g)
        Isa::template gemm<T>(B, H, nj, hp, H, a.rec->wp + g * H + j0, GH, pre_t + g * H + j0, GH);
      for (int64_t b = 0; b < B; ++b) {
        if (active(L, t, b)) {
          cell.forward(H, pre_t + b * GH, x_t + b * a.sx1, hp + b * H, row(c_prev, b, H), row(ws, b, WH), row(c, b, H),
                       y_t + b * H, j0, j1);
          std::copy(y_t + b * H + j0, y_t + b * H + j1, hn + b * H + j0);
        } else {
          for (int64_t g = 0; g < WG; ++g) std::fill(ws + b * WH + g * H + j0, ws + b * WH + g * H + j1, T(0));
          if constexpr (Cell::HAS_C) std::copy(c_prev + b * H + j0, c_prev + b * H + j1, c + b * H + j0);
          std::copy(hp + b * H + j0, hp + b * H + j1, hn + b * H + j0);
          std::fill(y_t + b * H + j0, y_t + b * H + j1, T(0));
        }
      }
    }
    c_prev = c;
    if (pool.barrier(nt, me)) {  // the team gave up its threads: thread 0 takes every unit
      if (tid != 0) return;
      nt = 1;
      j0 = 0;
      j1 = nj = H;
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    if constexpr (Cell::HAS_C) std::copy(c_prev + b * H + j0, c_prev + b * H + j1, a.c_n + b * H + j0);
    if (a.steps & 1) std::copy(hb[1] + b * H + j0, hb[1] + b * H + j1, a.h + b * H + j0);
  }
}

template <class Cell, class Isa>
FASTRNN_INLINE void backward_part(const Cell& cell, const BackwardArgs<typename Cell::Scalar>& a, Pool& pool, int tid,
                                  int nt) {
  using T = typename Cell::Scalar;
  static_assert(Cell::UNIT_SLICES && Cell::STEP_SUMS == 0 && !Cell::DGH_OUT, "unit-sliced backward");
  const int64_t B = a.B, H = a.H, GH = Cell::GATES * H, SH = Cell::saved(H);
  int64_t j0, j1;
  unit_slice<T>(H, tid, nt, j0, j1);
  int64_t nj = j1 - j0;
  Pool::Member me;
  const int64_t* L = a.lengths;
  T* const* no_sums = nullptr;
  // after a barrier that gave up the threads: thread 0 takes every unit from there on (the
  // others' work before it is done; a product after it then covers every column)
  auto alone = [&]() FASTRNN_LAMBDA_INLINE {
    nt = 1;
    j0 = 0;
    j1 = nj = H;
  };
  for (int64_t s = a.steps - 1; s >= 0; --s) {
    const int64_t t = step_at(s, a.steps, a.reverse);
    const int64_t p = s > 0 ? step_at(s - 1, a.steps, a.reverse) : -1;
    const T* c_prev = p < 0 ? a.c0 : row(a.cs, p, B * H);
    const T* dy_t = a.dy + t * B * H;
    T* dx_t = a.dx + t * B * GH;
    T* dg = Cell::X_IN_PRODUCT ? dx_t : a.dgh;
    if (nj > 0) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = b * H + j0; j < b * H + j1; ++j) a.dht[j] = a.dh[j] + dy_t[j];
      if (!Cell::H_DIRECT)
        for (int64_t b = 0; b < B; ++b) std::fill(a.dhnew + b * H + j0, a.dhnew + b * H + j1, T(0));
      for (int64_t b = 0; b < B; ++b) {
        const int64_t tb = t * B + b;
        if (active(L, t, b)) {
          cell.backward(H, a.saved + tb * SH, row(a.cs, tb, H), row(c_prev, b, H), row(a.h_prev, tb, H), a.dht + b * H,
                        row(a.dc, b, H), no_sums, dx_t + b * GH, Cell::X_IN_PRODUCT ? nullptr : dg + b * GH,
                        a.dhnew + b * H, j0, j1);
        } else {
          for (int g = 0; g < Cell::GATES; ++g) {
            std::fill(dx_t + b * GH + g * H + j0, dx_t + b * GH + g * H + j1, T(0));
            if (!Cell::X_IN_PRODUCT) std::fill(dg + b * GH + g * H + j0, dg + b * GH + g * H + j1, T(0));
          }
        }
      }
    }
    if (pool.barrier(nt, me)) {
      if (tid != 0) return;
      alone();
    }
    if (nj > 0) {
      Isa::template gemm<T>(B, GH, nj, dg, GH, a.rec->wp + j0, H, a.dhnew + j0, H);
      for (int64_t b = 0; b < B; ++b)
        if (active(L, t, b)) std::copy(a.dhnew + b * H + j0, a.dhnew + b * H + j1, a.dh + b * H + j0);
    }
    if (!Cell::X_IN_PRODUCT && pool.barrier(nt, me)) {
      if (tid != 0) return;
      alone();
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

#define FASTRNN_DEFINE_ISA(NAME, TARGET, SHAPE)                                                                       \
  struct NAME {                                                                                                       \
    template <typename T>                                                                                             \
    TARGET __attribute__((noinline)) static void gemm(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda,       \
                                                      const T* W, int64_t ldw, T* C, int64_t ldc) {                   \
      gemm_acc<T, SHAPE>(M, K, N, A, lda, W, ldw, C, ldc);                                                            \
    }                                                                                                                 \
    template <class Cell>                                                                                             \
    TARGET static void forward(const Cell& cell, const ForwardArgs<typename Cell::Scalar>& a) {                       \
      forward_loop<Cell, NAME>(cell, a);                                                                              \
    }                                                                                                                 \
    template <class Cell>                                                                                             \
    TARGET static void backward(const Cell& cell, const BackwardArgs<typename Cell::Scalar>& a) {                     \
      backward_loop<Cell, NAME>(cell, a);                                                                             \
    }                                                                                                                 \
    template <class Cell>                                                                                             \
    TARGET static void forward_mt(const Cell& cell, const ForwardArgs<typename Cell::Scalar>& a, Pool& pool, int tid, \
                                  int nt) {                                                                           \
      forward_part<Cell, NAME>(cell, a, pool, tid, nt);                                                               \
    }                                                                                                                 \
    template <class Cell>                                                                                             \
    TARGET static void backward_mt(const Cell& cell, const BackwardArgs<typename Cell::Scalar>& a, Pool& pool,        \
                                   int tid, int nt) {                                                                 \
      backward_part<Cell, NAME>(cell, a, pool, tid, nt);                                                              \
    }                                                                                                                 \
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

// ---------------------------------------------------------------------------------------
// How many threads a loop uses. Threads pay a barrier (or two) per step, about 0.1-0.2 us
// between two cores, and gain only if the cores are real: on two hyperthreads of one core
// the halves of the product share the core's FMA units and L1 and a step does not get faster.
// So the decision is measured on the machine, once per thread count, at the first call that
// could use threads: a synthetic B = 1 LSTM-shaped step (K = H, N = 4H, float) at a few H, one
// thread against nt; the smallest per-step product (B*K*N multiply-adds) from which nt
// threads are at least 15% faster at that and every larger measured size becomes the
// threshold, or none (never threaded) if even the largest does not win.
// ---------------------------------------------------------------------------------------
enum ThreadPolicy : int { kThreadsAuto = 0, kThreadsNever = 1, kThreadsAlways = 2 };
inline std::atomic<int> g_thread_policy{kThreadsAuto};

using GemmF = void (*)(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t);

inline GemmF picked_gemm_f() {
#if FASTRNN_X86_ISAS
  return pick_isa<GemmF>(&IsaAvx512::gemm<float>, &IsaAvx2::gemm<float>, &IsaBaseline::gemm<float>);
#else
  return &IsaBaseline::gemm<float>;
#endif
}

// Seconds for `steps` synthetic steps of a B = 1, hidden-size-H LSTM-shaped loop on nt threads.
inline double synthetic_steps(GemmF gemm, int64_t H, int nt, int64_t steps, std::vector<float>& w,
                              std::vector<float>& h, std::vector<float>& pre) {
  const int64_t GH = 4 * H;
  Pool& pool = Pool::get();
  auto job = [&](int tid, int n) {
    int64_t j0, j1;
    unit_slice<float>(H, tid, n, j0, j1);
    float* hb[2] = {h.data(), h.data() + H};
    Pool::Member me;
    for (int64_t s = 0; s < steps; ++s) {
      const float* hp = hb[s & 1];
      float* hn = hb[(s + 1) & 1];
      for (int g = 0; g < 4; ++g) {
        std::fill(pre.data() + g * H + j0, pre.data() + g * H + j1, 0.0f);
        gemm(1, H, j1 - j0, hp, H, w.data() + g * H + j0, GH, pre.data() + g * H + j0, GH);
      }
      for (int64_t j = j0; j < j1; ++j) hn[j] = 0.25f * (pre[j] + pre[H + j] + pre[2 * H + j] + pre[3 * H + j]);
      if (pool.barrier(n, me)) {  // loaded machine: thread 0 finishes alone, slower
        if (tid != 0) return;
        n = 1;
        j0 = 0;
        j1 = H;
      }
    }
  };
  const auto t0 = std::chrono::steady_clock::now();
  if (nt == 1 || !pool.run(nt, job)) job(0, 1);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline int64_t calibrate_min_work(int nt) {
  const GemmF gemm = picked_gemm_f();
  const int64_t sizes[] = {32, 64, 128, 256};
  bool win[4];
  for (int i = 0; i < 4; ++i) {
    const int64_t H = sizes[i], steps = 16384 / H;
    std::vector<float> w(H * 4 * H, 1.0f / H), h(2 * H, 0.5f), pre(4 * H);
    double t1 = 1e30, tn = 1e30;
    for (int rep = 0; rep < 5; ++rep) {  // alternating, best of 5: the machine may be shared
      t1 = std::min(t1, synthetic_steps(gemm, H, 1, steps, w, h, pre));
      tn = std::min(tn, synthetic_steps(gemm, H, nt, steps, w, h, pre));
    }
    win[i] = tn < 0.85 * t1;
  }
  int64_t threshold = std::numeric_limits<int64_t>::max();
  for (int i = 3; i >= 0 && win[i]; --i) threshold = sizes[i] * 4 * sizes[i];
  return threshold;
}

// The calibrated threshold for nt threads (measured once per nt per process).
inline int64_t min_threaded_work(int nt) {
  static std::mutex mu;
  static std::vector<int64_t> known;  // index nt; -1: not measured
  std::lock_guard<std::mutex> lock(mu);
  if (static_cast<int>(known.size()) <= nt) known.resize(nt + 1, -1);
  if (known[nt] < 0) known[nt] = calibrate_min_work(nt);
  return known[nt];
}

// Threads for a loop over hidden size H with batch B (1: single-threaded loop). Never more
// than torch's intra-op thread count.
template <class Cell>
int loop_threads(int64_t B, int64_t H, bool projection, bool blas) {
  using T = typename Cell::Scalar;
  if (!Cell::UNIT_SLICES || projection || blas) return 1;
  const int policy = g_thread_policy.load(std::memory_order_relaxed);
  if (policy == kThreadsNever) return 1;
  int nt = at::get_num_threads();
  if (nt < 2) return 1;
  if (policy == kThreadsAlways) return nt;  // tests: even threads with empty slices
  constexpr int64_t VN = 64 / sizeof(T);
  nt = static_cast<int>(std::min<int64_t>(nt, (H + VN - 1) / VN));
  if (nt < 2 || Pool::get().backing_off()) return 1;
  return B * H * Cell::GATES * H >= min_threaded_work(nt) ? nt : 1;
}

template <class Cell>
void run_forward_loop(const Cell& cell, const ForwardArgs<typename Cell::Scalar>& a, int nt) {
  using Fn = void (*)(const Cell&, const ForwardArgs<typename Cell::Scalar>&);
#if FASTRNN_X86_ISAS
  static const Fn fn = pick_isa<Fn>(&IsaAvx512::forward<Cell>, &IsaAvx2::forward<Cell>, &IsaBaseline::forward<Cell>);
#else
  static const Fn fn = &IsaBaseline::forward<Cell>;
#endif
  if constexpr (Cell::UNIT_SLICES) {
    if (nt > 1) {
      using FnMt = void (*)(const Cell&, const ForwardArgs<typename Cell::Scalar>&, Pool&, int, int);
#if FASTRNN_X86_ISAS
      static const FnMt part =
          pick_isa<FnMt>(&IsaAvx512::forward_mt<Cell>, &IsaAvx2::forward_mt<Cell>, &IsaBaseline::forward_mt<Cell>);
#else
      static const FnMt part = &IsaBaseline::forward_mt<Cell>;
#endif
      Pool& pool = Pool::get();
      auto job = [&](int tid, int n) { part(cell, a, pool, tid, n); };
      if (pool.run(nt, job)) return;
    }
  }
  fn(cell, a);  // also when the pool is busy with another caller's loop
}

template <class Cell>
void run_backward_loop(const Cell& cell, const BackwardArgs<typename Cell::Scalar>& a, int nt) {
  using Fn = void (*)(const Cell&, const BackwardArgs<typename Cell::Scalar>&);
#if FASTRNN_X86_ISAS
  static const Fn fn = pick_isa<Fn>(&IsaAvx512::backward<Cell>, &IsaAvx2::backward<Cell>, &IsaBaseline::backward<Cell>);
#else
  static const Fn fn = &IsaBaseline::backward<Cell>;
#endif
  if constexpr (Cell::UNIT_SLICES) {
    if (nt > 1) {
      using FnMt = void (*)(const Cell&, const BackwardArgs<typename Cell::Scalar>&, Pool&, int, int);
#if FASTRNN_X86_ISAS
      static const FnMt part =
          pick_isa<FnMt>(&IsaAvx512::backward_mt<Cell>, &IsaAvx2::backward_mt<Cell>, &IsaBaseline::backward_mt<Cell>);
#else
      static const FnMt part = &IsaBaseline::backward_mt<Cell>;
#endif
      Pool& pool = Pool::get();
      auto job = [&](int tid, int n) { part(cell, a, pool, tid, n); };
      if (pool.run(nt, job)) return;
    }
  }
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
                                bool workspace) {
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
  StepGemm<T> rec(w_hh.t(), B);
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
  const int nt = loop_threads<Cell>(B, H, w_hr != nullptr, rec.blas);
  at::Tensor h_alt;
  if (nt > 1) {
    h_alt = fresh({B, P}, opts);
    a.h_alt = h_alt.data_ptr<T>();
  }
  run_forward_loop(cell, a, nt);
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
  run_backward_loop(cell, a, loop_threads<Cell>(B, H, w_hr != nullptr, rec.blas));
  std::vector<at::Tensor> out{dx, dh};
  if (Cell::HAS_C) out.push_back(dc);
  if (Cell::PROJECTION) out.push_back(dh_out);
  if (Cell::DGH_OUT) out.push_back(dgh);
  out.insert(out.end(), sums.begin(), sums.end());
  return out;
}

}  // namespace fastrnn
