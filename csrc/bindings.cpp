// fastrnn C++ CPU backend (fastrnn._C): argument checks and the Python entry points.
// The backend runs only the time loop of a recurrence (recurrence.h over the cells of
// cells.h, per-step products in gemm.h); the weight gradients are computed after the loop
// by the caller. float32 and float64; every output is a fresh buffer.
#include <torch/extension.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "recurrence.h"

namespace fastrnn {
namespace {

// ---------------------------------------------------------------------------------------
// Argument checks: direct calls with bad arguments raise, never crash.
// ---------------------------------------------------------------------------------------
// Everything past these checks relies on them: the kernels index every buffer with the sizes
// derived from x_proj (forward) or the saved workspace (backward), so one tensor of another
// shape would be read or written out of bounds. Strides are free: each tensor is made contiguous.
void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& like, std::vector<int64_t> shape) {
  TORCH_CHECK(t.device().is_cpu(), "fastrnn cpp backend: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.layout() == at::kStrided, "fastrnn cpp backend: ", name, " must be a dense (strided) tensor, got ",
              t.layout());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "fastrnn cpp backend: ", name, " has dtype ", t.scalar_type(),
              ", expected ", like.scalar_type());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "fastrnn cpp backend: ", name, " must have shape ",
              at::IntArrayRef(shape), ", got ", t.sizes());
}

// x_proj: rows of each (t, b) must be contiguous; any strides between rows are accepted.
at::Tensor rows_contiguous(const at::Tensor& x) { return x.stride(2) == 1 ? x : x.contiguous(); }

// The tensor all other sizes are derived from: x_proj forward, the saved workspace backward.
std::tuple<int64_t, int64_t, int64_t> check_x(const at::Tensor& x, int64_t gates,
                                              const c10::optional<at::Tensor>& lengths) {
  TORCH_CHECK(x.device().is_cpu(), "fastrnn cpp backend: x_proj must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.layout() == at::kStrided, "fastrnn cpp backend: x_proj must be a dense (strided) tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "fastrnn cpp backend supports float32 and float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 3, "fastrnn cpp backend: x_proj must be 3-D (T, B, G), got ", x.dim(), "-D");
  TORCH_CHECK(x.size(0) > 0, "Expected sequence length to be larger than 0 in RNN");
  TORCH_CHECK(x.size(2) % gates == 0, "fastrnn cpp backend: x_proj's last dim ", x.size(2), " is not a multiple of ",
              gates);
  if (lengths) {
    TORCH_CHECK(lengths->device().is_cpu() && lengths->scalar_type() == at::kLong && lengths->dim() == 1 &&
                    lengths->size(0) == x.size(1),
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
    TORCH_CHECK(L[b] >= 0 && L[b] <= T, "fastrnn cpp backend: lengths[", b, "] = ", L[b], " is outside [0, ", T, "]");
  }
  return L;
}

// A 2-D tensor's size(dim) for deriving the other shapes (size() itself would throw an
// IndexError, not the RuntimeError of every other argument error).
int64_t size_2d(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == 2, "fastrnn cpp backend: ", name, " must be 2-D, got ", t.dim(), "-D");
  return t.size(dim);
}

bool is_relu(const std::string& nonlinearity) {
  TORCH_CHECK(nonlinearity == "tanh" || nonlinearity == "relu", "fastrnn: Unknown nonlinearity '", nonlinearity,
              "'. Select from 'tanh' or 'relu'.");
  return nonlinearity == "relu";
}

// =======================================================================================
// Entry points (time-major; P = proj_size or H)
// =======================================================================================
// -> y (T,B,P), h_n (B,P), c_n (B,H), gates (T,B,4H) activated i,f,g,o, cs (T,B,H) carried c_t
std::vector<at::Tensor> lstm_forward(const at::Tensor& x_proj, const at::Tensor& w_hh,
                                     const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor& c0,
                                     const c10::optional<at::Tensor>& lengths, bool reverse, bool workspace) {
  auto [T, B, H] = check_x(x_proj, 4, lengths);
  const int64_t P = w_hr ? size_2d(*w_hr, "w_hr", 0) : H;
  check_tensor(w_hh, "w_hh", x_proj, {4 * H, P});
  if (w_hr) check_tensor(*w_hr, "w_hr", x_proj, {P, H});
  check_tensor(h0, "h0", x_proj, {B, P});
  check_tensor(c0, "c0", x_proj, {B, H});
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  const auto x = rows_contiguous(x_proj);
  const auto w_hr_c = w_hr ? w_hr->contiguous() : at::Tensor();
  const auto c0_c = c0.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_forward", [&] {
    return forward(Lstm<scalar_t>{}, x, w_hh.contiguous(), w_hr ? &w_hr_c : nullptr, h0.contiguous(), &c0_c, L, reverse,
                   workspace);
  });
}

// -> dx_proj (T,B,4H), dh0 (B,P), dc0 (B,H), dh_out (T,B,P) or (0,) without w_hr
std::vector<at::Tensor> lstm_backward(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
                                      const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr,
                                      const at::Tensor& c0, const at::Tensor& gates, const at::Tensor& cs,
                                      const c10::optional<at::Tensor>& lengths, bool reverse) {
  int64_t T, B, H;  // plain variables: the dispatch lambda captures H
  std::tie(T, B, H) = check_x(gates, 4, lengths);
  // without a projection the kernel's dh rows are H long: P must be H, not just consistent
  const int64_t P = w_hr ? size_2d(*w_hr, "w_hr", 0) : H;
  check_tensor(dy, "dy", gates, {T, B, P});
  check_tensor(dh_n, "dh_n", gates, {B, P});
  check_tensor(dc_n, "dc_n", gates, {B, H});
  check_tensor(w_hh, "w_hh", gates, {4 * H, P});
  if (w_hr) check_tensor(*w_hr, "w_hr", gates, {P, H});
  check_tensor(c0, "c0", gates, {B, H});
  check_tensor(cs, "cs", gates, {T, B, H});
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  const auto w_hr_c = w_hr ? w_hr->contiguous() : at::Tensor();
  const auto dc_n_c = dc_n.contiguous(), c0_c = c0.contiguous(), cs_c = cs.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    return backward(Lstm<scalar_t>{}, H, dy.contiguous(), dh_n.contiguous(), &dc_n_c, w_hh.contiguous(),
                    w_hr ? &w_hr_c : nullptr, &c0_c, gates.contiguous(), &cs_c, nullptr, L, reverse);
  });
}

// -> y (T,B,P), h_n (B,P), c_n (B,H), gates (T,B,4H) activated i,f,g,o, cs (T,B,H) carried c_t
// w_ch (3H) = p_i, p_f, p_o: the peepholes
std::vector<at::Tensor> peephole_lstm_forward(const at::Tensor& x_proj, const at::Tensor& w_hh,
                                              const c10::optional<at::Tensor>& w_hr, const at::Tensor& w_ch,
                                              const at::Tensor& h0, const at::Tensor& c0,
                                              const c10::optional<at::Tensor>& lengths, bool reverse, bool workspace) {
  auto [T, B, H] = check_x(x_proj, 4, lengths);
  const int64_t P = w_hr ? size_2d(*w_hr, "w_hr", 0) : H;
  check_tensor(w_hh, "w_hh", x_proj, {4 * H, P});
  if (w_hr) check_tensor(*w_hr, "w_hr", x_proj, {P, H});
  check_tensor(w_ch, "w_ch", x_proj, {3 * H});
  check_tensor(h0, "h0", x_proj, {B, P});
  check_tensor(c0, "c0", x_proj, {B, H});
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  const auto x = rows_contiguous(x_proj);
  const auto w_hr_c = w_hr ? w_hr->contiguous() : at::Tensor();
  const auto c0_c = c0.contiguous(), w_ch_c = w_ch.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "peephole_lstm_forward", [&] {
    return forward(PeepholeLstm<scalar_t>{w_ch_c.data_ptr<scalar_t>()}, x, w_hh.contiguous(), w_hr ? &w_hr_c : nullptr,
                   h0.contiguous(), &c0_c, L, reverse, workspace);
  });
}

// -> dx_proj (T,B,4H), dh0 (B,P), dc0 (B,H), dh_out (T,B,P) or (0,) without w_hr
std::vector<at::Tensor> peephole_lstm_backward(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
                                               const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr,
                                               const at::Tensor& w_ch, const at::Tensor& c0, const at::Tensor& gates,
                                               const at::Tensor& cs, const c10::optional<at::Tensor>& lengths,
                                               bool reverse) {
  int64_t T, B, H;  // plain variables: the dispatch lambda captures H
  std::tie(T, B, H) = check_x(gates, 4, lengths);
  const int64_t P = w_hr ? size_2d(*w_hr, "w_hr", 0) : H;
  check_tensor(dy, "dy", gates, {T, B, P});
  check_tensor(dh_n, "dh_n", gates, {B, P});
  check_tensor(dc_n, "dc_n", gates, {B, H});
  check_tensor(w_hh, "w_hh", gates, {4 * H, P});
  if (w_hr) check_tensor(*w_hr, "w_hr", gates, {P, H});
  check_tensor(w_ch, "w_ch", gates, {3 * H});
  check_tensor(c0, "c0", gates, {B, H});
  check_tensor(cs, "cs", gates, {T, B, H});
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  const auto w_hr_c = w_hr ? w_hr->contiguous() : at::Tensor();
  const auto dc_n_c = dc_n.contiguous(), c0_c = c0.contiguous(), cs_c = cs.contiguous(), w_ch_c = w_ch.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "peephole_lstm_backward", [&] {
    return backward(PeepholeLstm<scalar_t>{w_ch_c.data_ptr<scalar_t>()}, H, dy.contiguous(), dh_n.contiguous(), &dc_n_c,
                    w_hh.contiguous(), w_hr ? &w_hr_c : nullptr, &c0_c, gates.contiguous(), &cs_c, nullptr, L, reverse);
  });
}

// A negative or NaN eps makes 1/sqrt(var + eps) NaN or unbounded for some rows: refused
// rather than returned as numbers.
void check_eps(double eps) {
  TORCH_CHECK(eps >= 0.0 && std::isfinite(eps), "fastrnn cpp backend: eps must be finite and >= 0, got ", eps);
}

// x_proj: the LN_ih-normalised input side. -> y (T,B,H), h_n (B,H), c_n (B,H),
// ws (T,B,9H+2) = [i, f, g, o | rhat (4H) | shat (H) | rstd_r, rstd_s], cs (T,B,H)
std::vector<at::Tensor> layernorm_lstm_forward(const at::Tensor& x_proj, const at::Tensor& w_hh,
                                               const at::Tensor& ln_hh_weight,
                                               const c10::optional<at::Tensor>& ln_hh_bias,
                                               const at::Tensor& ln_c_weight,
                                               const c10::optional<at::Tensor>& ln_c_bias, const at::Tensor& h0,
                                               const at::Tensor& c0, const c10::optional<at::Tensor>& lengths,
                                               bool reverse, double eps, bool workspace) {
  auto [T, B, H] = check_x(x_proj, 4, lengths);
  check_tensor(w_hh, "w_hh", x_proj, {4 * H, H});
  check_tensor(ln_hh_weight, "ln_hh_weight", x_proj, {4 * H});
  if (ln_hh_bias) check_tensor(*ln_hh_bias, "ln_hh_bias", x_proj, {4 * H});
  check_tensor(ln_c_weight, "ln_c_weight", x_proj, {H});
  if (ln_c_bias) check_tensor(*ln_c_bias, "ln_c_bias", x_proj, {H});
  check_tensor(h0, "h0", x_proj, {B, H});
  check_tensor(c0, "c0", x_proj, {B, H});
  check_eps(eps);
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  const auto x = rows_contiguous(x_proj);
  const auto w_r = ln_hh_weight.contiguous(), w_c = ln_c_weight.contiguous(), c0_c = c0.contiguous();
  const auto b_r = ln_hh_bias ? ln_hh_bias->contiguous() : at::Tensor();
  const auto b_c = ln_c_bias ? ln_c_bias->contiguous() : at::Tensor();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "layernorm_lstm_forward", [&] {
    const LayerNormLstm<scalar_t> cell{w_r.data_ptr<scalar_t>(), ln_hh_bias ? b_r.data_ptr<scalar_t>() : nullptr,
                                       w_c.data_ptr<scalar_t>(), ln_c_bias ? b_c.data_ptr<scalar_t>() : nullptr,
                                       static_cast<scalar_t>(eps)};
    return forward(cell, x, w_hh.contiguous(), nullptr, h0.contiguous(), &c0_c, L, reverse, workspace);
  });
}

// -> dx_proj (T,B,4H), dh0 (B,H), dc0 (B,H), dgh (T,B,4H) the gradient of each step's product
// h_prev @ W_hh^T, and per step summed over its active rows: sum_da_rhat (T,4H), sum_da (T,4H),
// sum_dc_shat (T,H), sum_dc (T,H) (dc_t: the gradient reaching c_t)
std::vector<at::Tensor> layernorm_lstm_backward(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
                                                const at::Tensor& w_hh, const at::Tensor& ln_hh_weight,
                                                const at::Tensor& ln_c_weight, const at::Tensor& c0,
                                                const at::Tensor& ws, const at::Tensor& cs,
                                                const c10::optional<at::Tensor>& lengths, bool reverse) {
  // every other size comes from ws (T, B, 9H + 2)
  const auto [T, B, W] = check_x(ws, 1, lengths);
  TORCH_CHECK(W >= 2 && (W - 2) % 9 == 0, "fastrnn cpp backend: ws's last dim ", W, " is not 9H + 2");
  const int64_t H = (W - 2) / 9;
  check_tensor(dy, "dy", ws, {T, B, H});
  check_tensor(dh_n, "dh_n", ws, {B, H});
  check_tensor(dc_n, "dc_n", ws, {B, H});
  check_tensor(w_hh, "w_hh", ws, {4 * H, H});
  check_tensor(ln_hh_weight, "ln_hh_weight", ws, {4 * H});
  check_tensor(ln_c_weight, "ln_c_weight", ws, {H});
  check_tensor(c0, "c0", ws, {B, H});
  check_tensor(cs, "cs", ws, {T, B, H});
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  const auto w_r = ln_hh_weight.contiguous(), w_c = ln_c_weight.contiguous();
  const auto dc_n_c = dc_n.contiguous(), c0_c = c0.contiguous(), cs_c = cs.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(ws.scalar_type(), "layernorm_lstm_backward", [&] {
    const LayerNormLstm<scalar_t> cell{w_r.data_ptr<scalar_t>(), nullptr, w_c.data_ptr<scalar_t>(), nullptr,
                                       scalar_t(0)};
    return backward(cell, H, dy.contiguous(), dh_n.contiguous(), &dc_n_c, w_hh.contiguous(), nullptr, &c0_c,
                    ws.contiguous(), &cs_c, nullptr, L, reverse);
  });
}

// -> y (T,B,H), h_n (B,H), acts (T,B,4H) = r, z, n, hn
std::vector<at::Tensor> gru_forward(const at::Tensor& x_proj, const at::Tensor& w_hh,
                                    const c10::optional<at::Tensor>& b_hn, const at::Tensor& h0,
                                    const c10::optional<at::Tensor>& lengths, bool reverse, bool workspace) {
  auto [T, B, H] = check_x(x_proj, 3, lengths);
  check_tensor(w_hh, "w_hh", x_proj, {3 * H, H});
  if (b_hn) check_tensor(*b_hn, "b_hn", x_proj, {H});
  check_tensor(h0, "h0", x_proj, {B, H});
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  const auto x = rows_contiguous(x_proj);
  const auto bc = b_hn ? b_hn->contiguous() : at::Tensor();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_forward", [&] {
    const Gru<scalar_t> cell{b_hn ? bc.data_ptr<scalar_t>() : nullptr};
    return forward(cell, x, w_hh.contiguous(), nullptr, h0.contiguous(), nullptr, L, reverse, workspace);
  });
}

// h_prev (T,B,H): the state each step started from. -> dx_proj (T,B,3H) = [dar, daz, dan], dh0 (B,H)
std::vector<at::Tensor> gru_backward(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh,
                                     const at::Tensor& h_prev, const at::Tensor& acts,
                                     const c10::optional<at::Tensor>& lengths, bool reverse) {
  int64_t T, B, H;  // plain variables: the dispatch lambda captures H
  std::tie(T, B, H) = check_x(acts, 4, lengths);
  check_tensor(dy, "dy", acts, {T, B, H});
  check_tensor(dh_n, "dh_n", acts, {B, H});
  check_tensor(w_hh, "w_hh", acts, {3 * H, H});
  check_tensor(h_prev, "h_prev", acts, {T, B, H});
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  const auto h_prev_c = h_prev.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "gru_backward", [&] {
    return backward(Gru<scalar_t>{nullptr}, H, dy.contiguous(), dh_n.contiguous(), nullptr, w_hh.contiguous(), nullptr,
                    nullptr, acts.contiguous(), nullptr, &h_prev_c, L, reverse);
  });
}

// -> y (T,B,H), h_n (B,H); workspace is accepted for a uniform signature (there is none)
std::vector<at::Tensor> rnn_forward(const at::Tensor& x_proj, const at::Tensor& w_hh, const at::Tensor& h0,
                                    const c10::optional<at::Tensor>& lengths, bool reverse,
                                    const std::string& nonlinearity, bool /*workspace*/) {
  auto [T, B, H] = check_x(x_proj, 1, lengths);
  check_tensor(w_hh, "w_hh", x_proj, {H, H});
  check_tensor(h0, "h0", x_proj, {B, H});
  const bool relu = is_relu(nonlinearity);
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  const auto x = rows_contiguous(x_proj);
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_forward", [&] {
    const auto w = w_hh.contiguous(), h = h0.contiguous();
    return relu ? forward(Rnn<scalar_t, true>{}, x, w, nullptr, h, nullptr, L, reverse, false)
                : forward(Rnn<scalar_t, false>{}, x, w, nullptr, h, nullptr, L, reverse, false);
  });
}

// y: the forward's output (act' is taken from it). -> dx_proj (T,B,H), dh0 (B,H)
std::vector<at::Tensor> rnn_backward(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh,
                                     const at::Tensor& y, const c10::optional<at::Tensor>& lengths, bool reverse,
                                     const std::string& nonlinearity) {
  int64_t T, B, H;  // plain variables: the dispatch lambda captures H
  std::tie(T, B, H) = check_x(y, 1, lengths);
  check_tensor(dy, "dy", y, {T, B, H});
  check_tensor(dh_n, "dh_n", y, {B, H});
  check_tensor(w_hh, "w_hh", y, {H, H});
  const bool relu = is_relu(nonlinearity);
  at::Tensor keep;
  const int64_t* L = lengths_ptr(lengths, T, keep);
  return AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "rnn_backward", [&] {
    const auto d = dy.contiguous(), dh = dh_n.contiguous(), w = w_hh.contiguous(), yc = y.contiguous();
    return relu ? backward(Rnn<scalar_t, true>{}, H, d, dh, nullptr, w, nullptr, nullptr, yc, nullptr, nullptr, L,
                           reverse)
                : backward(Rnn<scalar_t, false>{}, H, d, dh, nullptr, w, nullptr, nullptr, yc, nullptr, nullptr, L,
                           reverse);
  });
}

// A layer's input projection and its gradients (fastrnn._cpp.linear / linear_backward).
void check_float_2d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.layout() == at::kStrided && t.dim() == 2 &&
                  (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble),
              "fastrnn cpp backend: ", name, " must be a dense 2-D float32 or float64 CPU tensor, got ",
              t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

at::Tensor linear_entry(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  check_float_2d(x, "x");
  check_tensor(w, "w", x, {w.size(0), x.size(1)});
  if (b) check_tensor(*b, "b", x, {w.size(0)});
  return input_linear(x, w, b);
}

std::tuple<at::Tensor, at::Tensor> linear_backward_entry(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                                                         bool need_dx, bool need_dw) {
  check_float_2d(x, "x");
  check_tensor(w, "w", x, {w.size(0), x.size(1)});
  check_tensor(dy, "dy", x, {x.size(0), w.size(0)});
  at::Tensor dx = need_dx ? input_linear_dx(dy, w) : dy.new_empty({0});
  at::Tensor dw = need_dw ? weight_grad(dy, x) : w.new_empty({0});
  return {dx, dw};
}

at::Tensor weight_grad_entry(const at::Tensor& dy, const at::Tensor& x) {
  check_float_2d(dy, "dy");
  check_tensor(x, "x", dy, {dy.size(0), x.size(1)});
  return weight_grad(dy, x);
}

}  // namespace

void register_cell_steps(pybind11::module_& m);  // cell_step.cpp
void register_stack(pybind11::module_& m);       // stack.cpp

}  // namespace fastrnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() =
      "fastrnn C++ CPU backend: the time loops of LSTM / GRU / RNN, peephole and LayerNorm LSTM (float32, float64)";
  using namespace fastrnn;
  m.def("lstm_forward", &lstm_forward, "LSTM time loop, forward", py::arg("x_proj"), py::arg("w_hh"), py::arg("w_hr"),
        py::arg("h0"), py::arg("c0"), py::arg("lengths"), py::arg("reverse"), py::arg("workspace") = true);
  m.def("lstm_backward", &lstm_backward, "LSTM time loop, backward", py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
        py::arg("w_hh"), py::arg("w_hr"), py::arg("c0"), py::arg("gates"), py::arg("cs"), py::arg("lengths"),
        py::arg("reverse"));
  m.def("gru_forward", &gru_forward, "GRU time loop, forward", py::arg("x_proj"), py::arg("w_hh"), py::arg("b_hn"),
        py::arg("h0"), py::arg("lengths"), py::arg("reverse"), py::arg("workspace") = true);
  m.def("gru_backward", &gru_backward, "GRU time loop, backward", py::arg("dy"), py::arg("dh_n"), py::arg("w_hh"),
        py::arg("h_prev"), py::arg("acts"), py::arg("lengths"), py::arg("reverse"));
  m.def("rnn_forward", &rnn_forward, "Elman RNN time loop, forward", py::arg("x_proj"), py::arg("w_hh"), py::arg("h0"),
        py::arg("lengths"), py::arg("reverse"), py::arg("nonlinearity"), py::arg("workspace") = true);
  m.def("rnn_backward", &rnn_backward, "Elman RNN time loop, backward", py::arg("dy"), py::arg("dh_n"), py::arg("w_hh"),
        py::arg("y"), py::arg("lengths"), py::arg("reverse"), py::arg("nonlinearity"));
  m.def("peephole_lstm_forward", &peephole_lstm_forward, "peephole LSTM time loop, forward", py::arg("x_proj"),
        py::arg("w_hh"), py::arg("w_hr"), py::arg("w_ch"), py::arg("h0"), py::arg("c0"), py::arg("lengths"),
        py::arg("reverse"), py::arg("workspace") = true);
  m.def("peephole_lstm_backward", &peephole_lstm_backward, "peephole LSTM time loop, backward", py::arg("dy"),
        py::arg("dh_n"), py::arg("dc_n"), py::arg("w_hh"), py::arg("w_hr"), py::arg("w_ch"), py::arg("c0"),
        py::arg("gates"), py::arg("cs"), py::arg("lengths"), py::arg("reverse"));
  m.def("layernorm_lstm_forward", &layernorm_lstm_forward, "LayerNorm LSTM time loop, forward", py::arg("x_proj"),
        py::arg("w_hh"), py::arg("ln_hh_weight"), py::arg("ln_hh_bias"), py::arg("ln_c_weight"), py::arg("ln_c_bias"),
        py::arg("h0"), py::arg("c0"), py::arg("lengths"), py::arg("reverse"), py::arg("eps"),
        py::arg("workspace") = true);
  m.def("layernorm_lstm_backward", &layernorm_lstm_backward, "LayerNorm LSTM time loop, backward", py::arg("dy"),
        py::arg("dh_n"), py::arg("dc_n"), py::arg("w_hh"), py::arg("ln_hh_weight"), py::arg("ln_c_weight"),
        py::arg("c0"), py::arg("ws"), py::arg("cs"), py::arg("lengths"), py::arg("reverse"));
  m.def("set_poison", [](bool on) { g_poison = on; }, "NaN-fill every buffer the kernels write (tests)");
  m.def("uses_blas", &use_blas, "whether a (M x K) @ (K x N) step product goes to BLAS");
  m.def(
      "uses_onednn", [](int64_t M, int64_t K, int64_t N) { return use_onednn<float>(M, K, N); },
      "whether a float32 (M x K) @ (K x N) product (step or projection) goes to oneDNN");
  m.def("linear", &linear_entry, "x @ w^T + b: a layer's input projection", py::arg("x"), py::arg("w"), py::arg("b"));
  m.def("weight_grad", &weight_grad_entry, "dy^T x over all rows: a weight's gradient", py::arg("dy"), py::arg("x"));
  m.def("linear_backward", &linear_backward_entry,
        "(dx = dy @ w, dw = dy^T x) of linear, an empty tensor for each not needed", py::arg("dy"), py::arg("x"),
        py::arg("w"), py::arg("need_dx"), py::arg("need_dw"));
  register_cell_steps(m);
  register_stack(m);
}
