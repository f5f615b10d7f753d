// Entry points of the one-call cell steps (cell_step.h): argument checks and registration.
#include "cell_step.h"

#include <ATen/record_function.h>
#include <torch/extension.h>

#include <string>
#include <vector>

namespace fastrnn {
namespace {

// A cell step's arguments, as torch.nn's cells take them (batched: x (B, I), states (B, H)).
// Direct calls with bad arguments raise, never crash: everything below indexes by these sizes.
struct CellDims { int64_t B, I, H; };

void check_2d(const at::Tensor& t, const char* name, const at::Tensor& like, int64_t rows, int64_t cols) {
  TORCH_CHECK(t.device().is_cpu(), "fastrnn cpp backend: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.layout() == at::kStrided, "fastrnn cpp backend: ", name, " must be a dense (strided) tensor");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "fastrnn cpp backend: ", name, " has dtype ", t.scalar_type(),
              ", expected ", like.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "fastrnn cpp backend: ", name,
              " must have shape (", rows, ", ", cols, "), got ", t.sizes());
}

void check_1d(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& like, int64_t n) {
  if (!t) return;
  TORCH_CHECK(t->device().is_cpu() && t->layout() == at::kStrided && t->scalar_type() == like.scalar_type() &&
                  t->dim() == 1 && t->size(0) == n,
              "fastrnn cpp backend: ", name, " must be a dense CPU ", like.scalar_type(), " tensor of shape (", n,
              "), got ", t->scalar_type(), " ", t->sizes());
}

CellDims check_cell(int gates, const at::Tensor& x, const at::Tensor& h, const at::Tensor* c, const at::Tensor& w_ih,
                    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                    const c10::optional<at::Tensor>& b_hh) {
  TORCH_CHECK(x.device().is_cpu() && x.layout() == at::kStrided,
              "fastrnn cpp backend: input must be a dense CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "fastrnn cpp backend supports float32 and float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2 && h.dim() == 2, "fastrnn cpp backend: a cell step takes 2-D input and state, got ", x.dim(),
              "-D and ", h.dim(), "-D");
  const CellDims d{x.size(0), x.size(1), h.size(1)};
  check_2d(h, "hx", x, d.B, d.H);
  if (c) check_2d(*c, "cx", x, d.B, d.H);
  check_2d(w_ih, "weight_ih", x, gates * d.H, d.I);
  check_2d(w_hh, "weight_hh", x, gates * d.H, d.H);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), "fastrnn cpp backend: bias_ih and bias_hh go together");
  check_1d(b_ih, "bias_ih", x, gates * d.H);
  check_1d(b_hh, "bias_hh", x, gates * d.H);
  return d;
}

std::vector<bool> check_need(const std::vector<bool>& need) {
  TORCH_CHECK(need.size() == 6, "fastrnn cpp backend: need lists 6 flags (dx, dh, dW_ih, dW_hh, db_ih, db_hh)");
  return need;
}

// -> h (B,H), c (B,H), gates (B,4H) activated i,f,g,o (or (0,) without workspace)
std::vector<at::Tensor> lstm_cell_forward(const at::Tensor& x, const at::Tensor& hx, const at::Tensor& cx,
                                          const at::Tensor& w_ih, const at::Tensor& w_hh,
                                          const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                          bool workspace) {
  RECORD_FUNCTION("fastrnn::lstm_cell_forward", std::vector<c10::IValue>());
  check_cell(4, x, hx, &cx, w_ih, w_hh, b_ih, b_hh);
  const auto xc = x.contiguous(), h = hx.contiguous(), c = cx.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_cell_forward", [&] {
    return cell_step_forward(Lstm<scalar_t>{}, xc, h, &c, w_ih, w_hh, b_ih, b_hh, workspace);
  });
}

// -> dx, dhx, dcx, dW_ih, dW_hh, db_ih, db_hh (undefined where `need` says so)
std::vector<at::Tensor> lstm_cell_backward(const at::Tensor& dh, const at::Tensor& dc, const at::Tensor& x,
                                           const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                                           const at::Tensor& w_hh, const at::Tensor& gates, const at::Tensor& c,
                                           const std::vector<bool>& need) {
  RECORD_FUNCTION("fastrnn::lstm_cell_backward", std::vector<c10::IValue>());
  const auto d = check_cell(4, x, hx, &cx, w_ih, w_hh, c10::nullopt, c10::nullopt);
  check_2d(dh, "dh", x, d.B, d.H);
  check_2d(dc, "dc", x, d.B, d.H);
  check_2d(gates, "gates", x, d.B, 4 * d.H);
  check_2d(c, "c", x, d.B, d.H);
  const auto n = check_need(need);
  const auto xc = x.contiguous(), h = hx.contiguous(), cp = cx.contiguous(), cc = c.contiguous(), dcc = dc.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_cell_backward", [&] {
    return cell_step_backward(Lstm<scalar_t>{}, dh.contiguous(), &dcc, xc, h, &cp, w_ih, w_hh, gates.contiguous(), &cc,
                              n);
  });
}

// -> h (B,H), acts (B,4H) = r, z, n, hn (or (0,) without workspace)
std::vector<at::Tensor> gru_cell_forward(const at::Tensor& x, const at::Tensor& hx, const at::Tensor& w_ih,
                                         const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                                         const c10::optional<at::Tensor>& b_hh, bool workspace) {
  RECORD_FUNCTION("fastrnn::gru_cell_forward", std::vector<c10::IValue>());
  check_cell(3, x, hx, nullptr, w_ih, w_hh, b_ih, b_hh);
  const auto xc = x.contiguous(), h = hx.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_cell_forward", [&] {
    // b_hh is inside gh (gh = h W_hh^T + b_hh, as torch.nn's GRUCell): the cell adds no b_hn
    return cell_step_forward(Gru<scalar_t>{nullptr}, xc, h, nullptr, w_ih, w_hh, b_ih, b_hh, workspace);
  });
}

std::vector<at::Tensor> gru_cell_backward(const at::Tensor& dh, const at::Tensor& x, const at::Tensor& hx,
                                          const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& acts,
                                          const std::vector<bool>& need) {
  RECORD_FUNCTION("fastrnn::gru_cell_backward", std::vector<c10::IValue>());
  const auto d = check_cell(3, x, hx, nullptr, w_ih, w_hh, c10::nullopt, c10::nullopt);
  check_2d(dh, "dh", x, d.B, d.H);
  check_2d(acts, "acts", x, d.B, 4 * d.H);
  const auto n = check_need(need);
  const auto xc = x.contiguous(), h = hx.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_cell_backward", [&] {
    return cell_step_backward(Gru<scalar_t>{nullptr}, dh.contiguous(), nullptr, xc, h, nullptr, w_ih, w_hh,
                              acts.contiguous(), nullptr, n);
  });
}

bool relu_of(const std::string& nonlinearity) {
  TORCH_CHECK(nonlinearity == "tanh" || nonlinearity == "relu", "fastrnn: Unknown nonlinearity '", nonlinearity,
              "'. Select from 'tanh' or 'relu'.");
  return nonlinearity == "relu";
}

// -> h (B,H), (0,): the backward takes act' from h
std::vector<at::Tensor> rnn_cell_forward(const at::Tensor& x, const at::Tensor& hx, const at::Tensor& w_ih,
                                         const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                                         const c10::optional<at::Tensor>& b_hh, const std::string& nonlinearity) {
  RECORD_FUNCTION("fastrnn::rnn_cell_forward", std::vector<c10::IValue>());
  check_cell(1, x, hx, nullptr, w_ih, w_hh, b_ih, b_hh);
  const bool relu = relu_of(nonlinearity);
  const auto xc = x.contiguous(), h = hx.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_cell_forward", [&] {
    return relu ? cell_step_forward(Rnn<scalar_t, true>{}, xc, h, nullptr, w_ih, w_hh, b_ih, b_hh, false)
                : cell_step_forward(Rnn<scalar_t, false>{}, xc, h, nullptr, w_ih, w_hh, b_ih, b_hh, false);
  });
}

// h: the forward's output
std::vector<at::Tensor> rnn_cell_backward(const at::Tensor& dh, const at::Tensor& x, const at::Tensor& hx,
                                          const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h,
                                          const std::string& nonlinearity, const std::vector<bool>& need) {
  RECORD_FUNCTION("fastrnn::rnn_cell_backward", std::vector<c10::IValue>());
  const auto d = check_cell(1, x, hx, nullptr, w_ih, w_hh, c10::nullopt, c10::nullopt);
  check_2d(dh, "dh", x, d.B, d.H);
  check_2d(h, "h", x, d.B, d.H);
  const bool relu = relu_of(nonlinearity);
  const auto n = check_need(need);
  const auto xc = x.contiguous(), hp = hx.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_cell_backward", [&] {
    const auto dhc = dh.contiguous(), hc = h.contiguous();
    return relu ? cell_step_backward(Rnn<scalar_t, true>{}, dhc, nullptr, xc, hp, nullptr, w_ih, w_hh, hc, nullptr, n)
                : cell_step_backward(Rnn<scalar_t, false>{}, dhc, nullptr, xc, hp, nullptr, w_ih, w_hh, hc, nullptr, n);
  });
}

}  // namespace

void register_cell_steps(pybind11::module_& m) {
  m.def("lstm_cell_forward", &lstm_cell_forward, "LSTMCell step, forward", py::arg("x"), py::arg("hx"), py::arg("cx"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("workspace"));
  m.def("lstm_cell_backward", &lstm_cell_backward, "LSTMCell step, backward", py::arg("dh"), py::arg("dc"),
        py::arg("x"), py::arg("hx"), py::arg("cx"), py::arg("w_ih"), py::arg("w_hh"), py::arg("gates"), py::arg("c"),
        py::arg("need"));
  m.def("gru_cell_forward", &gru_cell_forward, "GRUCell step, forward", py::arg("x"), py::arg("hx"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("workspace"));
  m.def("gru_cell_backward", &gru_cell_backward, "GRUCell step, backward", py::arg("dh"), py::arg("x"), py::arg("hx"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("acts"), py::arg("need"));
  m.def("rnn_cell_forward", &rnn_cell_forward, "RNNCell step, forward", py::arg("x"), py::arg("hx"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("nonlinearity"));
  m.def("rnn_cell_backward", &rnn_cell_backward, "RNNCell step, backward", py::arg("dh"), py::arg("x"), py::arg("hx"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("h"), py::arg("nonlinearity"), py::arg("need"));
}

}  // namespace fastrnn
