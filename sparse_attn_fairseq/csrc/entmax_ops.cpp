// The custom ops sparse_attn::entmax_forward / entmax_backward: argument checks, broadcasting, threads, the choice
// between the row solver (entmax_rows.cpp) and the lane solver (entmax_lanes.cpp), and the autograd formula.
//
//   entmax_forward(scores, alpha, mask, masked_below) -> probs
//     scores (..., n) float32; alpha float32 broadcastable to scores.shape[:-1] + (1,), every value in [1, 2]
//     (1: softmax); mask None or bool broadcastable to scores (True = masked); scores <= masked_below count as masked.
//   entmax_backward(grad, probs, alpha, alpha_grad) -> (grad_scores, grad_alpha per row (..., 1))
//
// Broadcasting happens here rather than in Python: a per-head alpha (H, 1, 1) or a key-padding mask (bsz, 1, 1, n)
// costs one small copy in C++, where each tensor operation in Python costs microseconds. A decoding step makes one call
// per attention layer on a few hundred short rows, so those microseconds were a third of its time.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ExpandUtils.h>
#include <Python.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "entmax_common.h"

namespace sparse_attn {
namespace {

constexpr int64_t kGrainEntries = 1 << 15;  // each thread's chunk of rows has at least this many entries

int64_t grain_rows(int64_t n) { return std::max<int64_t>(1, kGrainEntries / std::max<int64_t>(n, 1)); }

void check_scores(const at::Tensor& x, const at::Tensor& alpha, const char* what) {
  TORCH_CHECK(x.dim() >= 1, what, ": scores need at least one dimension");
  TORCH_CHECK(x.scalar_type() == at::kFloat && alpha.scalar_type() == at::kFloat, what, ": float32 only");
  TORCH_CHECK(x.device().is_cpu() && alpha.device().is_cpu(), what, ": CPU tensors only");
  TORCH_CHECK(x.size(-1) < (int64_t(1) << 31), what, ": rows longer than 2^31 entries");
}

// alpha as one contiguous value per row of x.
at::Tensor alpha_per_row(const at::Tensor& alpha, const at::Tensor& x, const char* what) {
  std::vector<int64_t> rows_shape(x.sizes().begin(), x.sizes().end());
  rows_shape.back() = 1;
  TORCH_CHECK(alpha.dim() <= x.dim() && at::is_expandable_to(alpha.sizes(), rows_shape), what, ": alpha of shape ",
              alpha.sizes(), " must broadcast to ", at::IntArrayRef(rows_shape), " (one alpha per row)");
  at::Tensor per_row = alpha.expand(rows_shape).contiguous();
  const float* a = per_row.data_ptr<float>();
  for (int64_t i = 0; i < per_row.numel(); ++i) {
    TORCH_CHECK(a[i] >= 1.f && a[i] <= 2.f, what, ": alpha must lie in [1, 2], got ", a[i]);
  }
  return per_row;
}

// The lane solver takes groups of rows with n <= kLaneMaxKeys and a general alpha; alpha 1 (softmax) and groups whose
// alphas all have a closed form (1.5, 2) are faster in the row solver.
bool lanes_fit(const float* alpha, int64_t rows) {
  bool general = false;
  for (int64_t r = 0; r < rows; ++r) {
    if (alpha[r] == 1.f) return false;
    general |= alpha[r] != 1.5f && alpha[r] != 2.f;
  }
  return general;
}

at::Tensor entmax_forward(const at::Tensor& scores, const at::Tensor& alpha, const std::optional<at::Tensor>& mask,
                          double masked_below) {
  const char* what = "sparse_attn::entmax_forward";
  check_scores(scores, alpha, what);
  const at::Tensor x = scores.contiguous(), a = alpha_per_row(alpha, x, what);
  at::Tensor m;
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, what, ": mask must be bool, got ", mask->scalar_type());
    TORCH_CHECK(at::is_expandable_to(mask->sizes(), x.sizes()), what, ": mask of shape ", mask->sizes(),
                " does not broadcast to the scores' ", x.sizes());
    m = mask->expand(x.sizes()).contiguous();
  }
  at::Tensor p = at::empty_like(x);
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  const float *xp = x.data_ptr<float>(), *ap = a.data_ptr<float>();
  const bool* mp = m.defined() ? m.data_ptr<bool>() : nullptr;
  float* pp = p.data_ptr<float>();
  const float below = static_cast<float>(masked_below);
  const int64_t groups = (rows + kLanes - 1) / kLanes;
  at::parallel_for(0, groups, std::max<int64_t>(1, grain_rows(n) / kLanes), [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      const int64_t first = group * kLanes, count = std::min(kLanes, rows - first), offset = first * n;
      const bool* group_mask = mp ? mp + offset : nullptr;
      if (n <= kLaneMaxKeys && lanes_fit(ap + first, count)) {
        entmax_forward_lanes(xp + offset, group_mask, pp + offset, count, n, ap + first, below);
      } else {
        entmax_forward_rows(xp + offset, group_mask, pp + offset, count, n, ap + first, below);
      }
    }
  });
  return p;
}

std::tuple<at::Tensor, at::Tensor> entmax_backward(const at::Tensor& grad, const at::Tensor& probs,
                                                   const at::Tensor& alpha, bool alpha_grad) {
  const char* what = "sparse_attn::entmax_backward";
  check_scores(probs, alpha, what);
  TORCH_CHECK(grad.sizes() == probs.sizes() && grad.scalar_type() == at::kFloat, what,
              ": grad must match the weights");
  const at::Tensor g = grad.contiguous(), p = probs.contiguous(), a = alpha_per_row(alpha, p, what);
  at::Tensor gz = at::empty_like(p), ga = at::empty_like(a);
  const int64_t n = p.size(-1), rows = n ? p.numel() / n : 0;
  const float *gp = g.data_ptr<float>(), *pp = p.data_ptr<float>(), *ap = a.data_ptr<float>();
  float *gzp = gz.data_ptr<float>(), *gap = ga.data_ptr<float>();
  if (rows == 0) return {gz, ga.zero_()};
  at::parallel_for(0, rows, grain_rows(n), [&](int64_t begin, int64_t end) {
    entmax_backward_rows(gp + begin * n, pp + begin * n, gzp + begin * n, gap + begin, end - begin, n, ap + begin,
                         alpha_grad);
  });
  return {gz, ga};
}

// Autograd in C++: a Python autograd kernel (torch.library.register_autograd) costs ~5 us per call, even without grad.
class EntmaxFunction : public torch::autograd::Function<EntmaxFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& scores, const at::Tensor& alpha,
                            const std::optional<at::Tensor>& mask, double masked_below) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("sparse_attn::entmax_forward", "")
                               .typed<decltype(entmax_forward)>();
    at::Tensor probs = op.call(scores, alpha, mask, masked_below);
    ctx->save_for_backward({probs, alpha});
    return probs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("sparse_attn::entmax_backward", "")
                               .typed<decltype(entmax_backward)>();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &probs = saved[0], &alpha = saved[1];
    const bool alpha_grad = ctx->needs_input_grad(1);
    auto [grad_scores, grad_rows] = op.call(grads[0], probs, alpha, alpha_grad);
    return {grad_scores, alpha_grad ? at::sum_to(grad_rows, alpha.sizes()) : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor entmax_forward_autograd(const at::Tensor& scores, const at::Tensor& alpha,
                                   const std::optional<at::Tensor>& mask, double masked_below) {
  return EntmaxFunction::apply(scores, alpha, mask, masked_below);
}

}  // namespace

TORCH_LIBRARY(sparse_attn, m) {
  m.def("entmax_forward(Tensor scores, Tensor alpha, Tensor? mask, float masked_below) -> Tensor");
  m.def("entmax_backward(Tensor grad, Tensor probs, Tensor alpha, bool alpha_grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sparse_attn, CPU, m) {
  m.impl("entmax_forward", &entmax_forward);
  m.impl("entmax_backward", &entmax_backward);
}

TORCH_LIBRARY_IMPL(sparse_attn, Autograd, m) { m.impl("entmax_forward", &entmax_forward_autograd); }

}  // namespace sparse_attn

// Importing the module (sparse_attn_fairseq._C) registers the ops above; it defines no Python functions.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sparse_attn::entmax_* custom ops", -1, nullptr};
  return PyModule_Create(&module);
}
