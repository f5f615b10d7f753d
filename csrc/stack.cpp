// A whole stack's forward (every layer and direction, the input projections, inter-layer
// dropout, the final states) in one call, for calls no backward follows: inference. Through
// the Python stack, the glue around the loops (projection, bias folding, the op wrapper and
// its checks, stacking the states) cost about as much as the time loop itself at small sizes
// (T=100, B=1, H=64). Every operation here is the one the Python stack runs (the same ATen
// calls in the same order, the same loops without their workspace), so results are the same
// bits, dropout masks included (at::dropout draws from torch's default generator as
// F.dropout does), except that a long sequence's projection is computed a chunk of steps
// at a time (chunk_steps), so inference never holds a whole (T, B, 4H) projection.
#include <torch/extension.h>

#include <algorithm>
#include <string>
#include <vector>

#include "recurrence.h"

namespace fastrnn {
namespace {

enum class Kind { lstm, gru, rnn_tanh, rnn_relu };

Kind kind_of(const std::string& mode) {
  if (mode == "LSTM") return Kind::lstm;
  if (mode == "GRU") return Kind::gru;
  if (mode == "RNN_TANH") return Kind::rnn_tanh;
  TORCH_CHECK(mode == "RNN_RELU", "fastrnn cpp backend: stack_forward runs LSTM, GRU, RNN_TANH or RNN_RELU, got '",
              mode, "'");
  return Kind::rnn_relu;
}

int64_t gates_of(Kind k) { return k == Kind::lstm ? 4 : k == Kind::gru ? 3 : 1; }

void check_2d(const at::Tensor& t, const char* name, const at::Tensor& like, int64_t rows, int64_t cols) {
  TORCH_CHECK(t.device().is_cpu() && t.layout() == at::kStrided && t.scalar_type() == like.scalar_type() &&
                  t.dim() == 2 && t.size(0) == rows && t.size(1) == cols,
              "fastrnn cpp backend: ", name, " must be a dense CPU ", like.scalar_type(), " tensor of shape (", rows,
              ", ", cols, "), got ", t.scalar_type(), " ", t.sizes());
}

void check_1d(const at::Tensor& t, const char* name, const at::Tensor& like, int64_t n) {
  TORCH_CHECK(t.device().is_cpu() && t.layout() == at::kStrided && t.scalar_type() == like.scalar_type() &&
                  t.dim() == 1 && t.size(0) == n,
              "fastrnn cpp backend: ", name, " must be a dense CPU ", like.scalar_type(), " tensor of shape (", n,
              "), got ", t.scalar_type(), " ", t.sizes());
}

void check_3d(const at::Tensor& t, const char* name, const at::Tensor& like, int64_t a, int64_t b, int64_t c) {
  TORCH_CHECK(t.device().is_cpu() && t.layout() == at::kStrided && t.scalar_type() == like.scalar_type() &&
                  t.dim() == 3 && t.size(0) == a && t.size(1) == b && t.size(2) == c,
              "fastrnn cpp backend: ", name, " must be a dense CPU ", like.scalar_type(), " tensor of shape (", a, ", ",
              b, ", ", c, "), got ", t.scalar_type(), " ", t.sizes());
}

// Steps per projection chunk: a chunk's projection holds at most 2^18 elements (1 MB in
// float32); at (T=100, B=64, H=512) that is 2 steps, a GEMM of 128 rows, still BLAS-sized.
// With 2^20 (8 steps) a 2-layer LSTM's inference there peaked 1.2 MB above torch.nn's
// (47.9 against 46.7 MB). Whole sequences below the cap stay one chunk (one GEMM, as the
// op route computes it).
int64_t chunk_steps(int64_t T, int64_t per_step) {
  const int64_t cap = int64_t(1) << 18;
  return per_step * T <= cap ? T : std::max<int64_t>(1, cap / per_step);
}

// One layer and direction, without a workspace. -> y, h_n, [c_n]
// packed_hh: W_hh^T packed once for a layer's chunks (step_pack), or undefined.
std::vector<at::Tensor> run_loop(Kind k, const at::Tensor& x, const at::Tensor& w_hh, const at::Tensor* w_hr,
                                 const at::Tensor& b_hn, const at::Tensor& h0, const at::Tensor* c0, const int64_t* L,
                                 bool reverse, const at::Tensor& packed_hh = {}) {
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stack_forward", [&] {
    switch (k) {
      case Kind::lstm:
        return forward(Lstm<scalar_t>{}, x, w_hh, w_hr, h0, c0, L, reverse, false, packed_hh);
      case Kind::gru:
        return forward(Gru<scalar_t>{b_hn.defined() ? b_hn.data_ptr<scalar_t>() : nullptr}, x, w_hh, nullptr, h0,
                       nullptr, L, reverse, false, packed_hh);
      case Kind::rnn_tanh:
        return forward(Rnn<scalar_t, false>{}, x, w_hh, nullptr, h0, nullptr, L, reverse, false, packed_hh);
      default:
        return forward(Rnn<scalar_t, true>{}, x, w_hh, nullptr, h0, nullptr, L, reverse, false, packed_hh);
    }
  });
}

at::Tensor pack_hh(const at::Tensor& w_hh, int64_t B) {
  return AT_DISPATCH_FLOATING_TYPES(w_hh.scalar_type(), "stack_forward",
                                    [&] { return step_pack<scalar_t>(w_hh.t(), B); });
}

// input (T, B, I) time-major; hx = [h0] or [h0, c0], (num_layers*D, B, P or H); weights:
// torch.nn's flat list (per layer and direction: w_ih, w_hh, [b_ih, b_hh], [w_hr]).
// dropout: the probability applied between layers (0 outside training).
// -> output (T, B, D*P), h_n, [c_n]
std::vector<at::Tensor> stack_forward(const std::string& mode, const at::Tensor& input,
                                      const std::vector<at::Tensor>& hx, const std::vector<at::Tensor>& weights,
                                      int64_t num_layers, bool bidirectional, bool bias, int64_t proj_size,
                                      double dropout, const c10::optional<at::Tensor>& lengths) {
  RECORD_FUNCTION("fastrnn::stack_forward", std::vector<c10::IValue>());
  const Kind k = kind_of(mode);
  const bool has_c = k == Kind::lstm, proj = proj_size > 0;
  TORCH_CHECK(!proj || has_c, "fastrnn cpp backend: proj_size is an LSTM's");
  TORCH_CHECK(input.device().is_cpu() && input.layout() == at::kStrided,
              "fastrnn cpp backend: input must be a dense CPU tensor");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "fastrnn cpp backend supports float32 and float64, got ", input.scalar_type());
  TORCH_CHECK(input.dim() == 3, "fastrnn cpp backend: input must be 3-D (T, B, I), got ", input.dim(), "-D");
  TORCH_CHECK(input.size(0) > 0, "Expected sequence length to be larger than 0 in RNN");
  TORCH_CHECK(num_layers > 0, "fastrnn cpp backend: num_layers must be positive");
  const int64_t D = bidirectional ? 2 : 1, G = gates_of(k), T = input.size(0), B = input.size(1);
  const int64_t per = 2 + (bias ? 2 : 0) + (proj ? 1 : 0);
  TORCH_CHECK(int64_t(weights.size()) == num_layers * D * per, "fastrnn cpp backend: expected ", num_layers * D * per,
              " weights, got ", weights.size());
  TORCH_CHECK(int64_t(hx.size()) == (has_c ? 2 : 1), "fastrnn cpp backend: expected ", has_c ? 2 : 1,
              " initial states, got ", hx.size());
  TORCH_CHECK(weights[1].dim() == 2 && weights[1].size(0) % G == 0, "fastrnn cpp backend: weight_hh_l0 must be (", G,
              "*H, P)");
  const int64_t H = weights[1].size(0) / G, P = proj ? proj_size : H;
  TORCH_CHECK(H > 0, "fastrnn cpp backend: hidden_size must be positive");
  check_3d(hx[0], "h0", input, num_layers * D, B, P);
  if (has_c) check_3d(hx[1], "c0", input, num_layers * D, B, H);
  at::Tensor keep;
  const int64_t* L = nullptr;
  if (lengths) {
    TORCH_CHECK(lengths->device().is_cpu() && lengths->scalar_type() == at::kLong && lengths->dim() == 1 &&
                    lengths->size(0) == B,
                "fastrnn cpp backend: lengths must be a CPU int64 tensor of shape (", B, ")");
    keep = lengths->contiguous();
    L = keep.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK(L[b] >= 0 && L[b] <= T, "fastrnn cpp backend: lengths[", b, "] = ", L[b], " is outside [0, ", T, "]");
  }
  at::Tensor layer_input = input;
  std::vector<at::Tensor> h_n, c_n;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t in = layer_input.size(2);
    std::vector<at::Tensor> w_ih(D), b(D), b_hn(D);
    for (int64_t d = 0; d < D; ++d) {
      const at::Tensor* w = &weights[(layer * D + d) * per];
      check_2d(w[0], "weight_ih", input, G * H, in);
      check_2d(w[1], "weight_hh", input, G * H, P);
      w_ih[d] = w[0];
      if (bias) {
        check_1d(w[2], "bias_ih", input, G * H);
        check_1d(w[3], "bias_hh", input, G * H);
        // the bias folding of fastrnn.cells: b_ih + b_hh, for the GRU b_hr and b_hz only
        // (its b_hn sits inside r * (W_hn h + b_hn))
        if (k == Kind::gru) {
          b[d] = w[2] + at::cat({w[3].slice(0, 0, 2 * H), at::zeros({H}, w[3].options())});
          b_hn[d] = w[3].slice(0, 2 * H).contiguous();
        } else {
          b[d] = w[2] + w[3];
        }
      }
      if (proj) check_2d(w[per - 1], "weight_hr", input, P, H);
    }
    const auto x2d = layer_input.reshape({T * B, in});
    std::vector<at::Tensor> ys;
    const int64_t Tc = chunk_steps(T, B * D * G * H);
    if (Tc == T) {
      // one projection GEMM for both directions, as the op route computes it
      const auto w_cat = D > 1 ? at::cat(w_ih) : w_ih[0];
      at::Tensor x_proj =
          input_linear(x2d, w_cat, bias ? c10::optional<at::Tensor>(D > 1 ? at::cat(b) : b[0]) : c10::nullopt);
      x_proj = x_proj.view({T, B, D * G * H});
      for (int64_t d = 0; d < D; ++d) {
        const int64_t i = layer * D + d;
        const at::Tensor* w = &weights[i * per];
        const auto x_d = D > 1 ? x_proj.slice(2, d * G * H, (d + 1) * G * H) : x_proj;
        const auto w_hr = proj ? w[per - 1].contiguous() : at::Tensor();
        const auto c0 = has_c ? hx[1][i].contiguous() : at::Tensor();
        auto out = run_loop(k, x_d, w[1].contiguous(), proj ? &w_hr : nullptr, b_hn[d], hx[0][i].contiguous(),
                            has_c ? &c0 : nullptr, L, d == 1);
        ys.push_back(out[0]);
        h_n.push_back(out[1]);
        if (has_c) c_n.push_back(out[2]);
      }
    } else {
      // Projection and loop Tc steps at a time, in each direction's own order, the states
      // carried from chunk to chunk: the (T, B, D*G*H) projection, which dominated inference
      // memory, is never whole. A sequence's length counts from each chunk's start.
      for (int64_t d = 0; d < D; ++d) {
        const int64_t i = layer * D + d;
        const at::Tensor* w = &weights[i * per];
        const auto w_hh = w[1].contiguous();
        const auto w_hr = proj ? w[per - 1].contiguous() : at::Tensor();
        at::Tensor h = hx[0][i].contiguous(), c = has_c ? hx[1][i].contiguous() : at::Tensor();
        auto y = at::empty({T, B, P}, input.options());
        at::Tensor lc = lengths ? at::empty({B}, keep.options()) : at::Tensor();
        const int64_t chunks = (T + Tc - 1) / Tc;
        // the weights packed once for every chunk (where oneDNN takes the products)
        const ChunkLinear project(w_ih[d], bias ? c10::optional<at::Tensor>(b[d]) : c10::nullopt, Tc * B);
        const at::Tensor packed_hh = pack_hh(w_hh, B);
        for (int64_t j = 0; j < chunks; ++j) {
          const int64_t q = d == 1 ? chunks - 1 - j : j, t0 = q * Tc, t1 = std::min(T, t0 + Tc);
          const auto rows = x2d.slice(0, t0 * B, t1 * B);
          auto x_c = project(rows).view({t1 - t0, B, G * H});
          if (L) {
            int64_t* l = lc.data_ptr<int64_t>();
            for (int64_t r = 0; r < B; ++r) l[r] = std::min(std::max(L[r] - t0, int64_t(0)), t1 - t0);
          }
          auto out = run_loop(k, x_c, w_hh, proj ? &w_hr : nullptr, b_hn[d], h, has_c ? &c : nullptr,
                              L ? lc.data_ptr<int64_t>() : nullptr, d == 1, packed_hh);
          y.slice(0, t0, t1).copy_(out[0]);
          h = out[1];
          if (has_c) c = out[2];
        }
        ys.push_back(y);
        h_n.push_back(h);
        if (has_c) c_n.push_back(c);
      }
    }
    layer_input = D > 1 ? at::cat(ys, -1) : ys[0];
    if (dropout > 0 && layer < num_layers - 1) layer_input = at::dropout(layer_input, dropout, true);
  }
  std::vector<at::Tensor> result{layer_input, at::stack(h_n)};
  if (has_c) result.push_back(at::stack(c_n));
  return result;
}

}  // namespace

void register_stack(pybind11::module_& m) {
  m.def("stack_forward", &stack_forward, "a whole stack's forward without workspaces (no backward follows)",
        py::arg("mode"), py::arg("input"), py::arg("hx"), py::arg("weights"), py::arg("num_layers"),
        py::arg("bidirectional"), py::arg("bias"), py::arg("proj_size"), py::arg("dropout"), py::arg("lengths"));
}

}  // namespace fastrnn
