// The product kernels of one family of adaptive layers as a single C++ autograd node: an experiment of
// benchmarks/family_extension.py, not part of the package. Each is a torch::autograd::Function whose forward
// and backward are C++, so that a training step records one autograd node per family and runs no Python for it:
//
// - FamilyKernels: the same native operations as timm_aconv.layers.kernel_group.family_kernels (one cat of the
//   sigmas, the softmax envelope, per stack of equal weight shapes one cat, one product and one split); the
//   backward calls the operations autograd's own formulas call, in the same order: the same bits;
// - FusedFamilyKernels: the envelope, the products and their backward as loops over the filters;
// - PlumbingOnly: the same inputs and outputs, zeros, no computation (what one node costs by itself).
//
// Families with a training window or float16 weights are not handled (the Python side refuses them).
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// float32's smallest normal number: where the softmax underflows, the square root's derivative stays finite
constexpr double kSmallestWeight = 1.2e-38;

struct FamilyKernels : public torch::autograd::Function<FamilyKernels> {
  // inputs: the family's weights, then its sigmas (both in the family's order); stack_ends: the end position
  // of each stack of equal weight shapes; out_channels: each layer's filters
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, Tensor sq_distance, int64_t grid_size,
                               double eps, std::vector<int64_t> stack_ends, std::vector<int64_t> out_channels) {
    const int64_t layers = static_cast<int64_t>(out_channels.size());
    Tensor sigma = layers > 1 ? at::cat(inputs.slice(layers, layers)) : inputs[layers];
    Tensor neg_half_two_var = at::rsub(sigma.square(), -eps / 2);
    Tensor exponent = at::div(sq_distance.reshape({1, -1}), neg_half_two_var.view({-1, 1}));
    Tensor weights = at::softmax(exponent, 1);
    Tensor root = weights.clamp_min(kSmallestWeight).sqrt();
    Tensor envelope = root.mul(grid_size).view({-1, 1, grid_size, grid_size});

    std::vector<int64_t> stack_channels;
    int64_t first = 0;
    for (int64_t end : stack_ends) {
      int64_t channels = 0;
      for (int64_t index = first; index < end; ++index) channels += out_channels[index];
      stack_channels.push_back(channels);
      first = end;
    }
    std::vector<Tensor> envelopes =
        stack_ends.size() > 1 ? envelope.split_with_sizes(stack_channels) : std::vector<Tensor>{envelope};

    variable_list kernels;
    variable_list saved{sigma, exponent, neg_half_two_var, weights, root};
    first = 0;
    for (size_t stack = 0; stack < stack_ends.size(); ++stack) {
      const int64_t end = stack_ends[stack];
      Tensor stack_weight = end - first > 1 ? at::cat(inputs.slice(first, end - first)) : inputs[first];
      Tensor product = stack_weight * envelopes[stack];
      saved.push_back(stack_weight);
      saved.push_back(envelopes[stack]);
      if (end - first > 1) {
        std::vector<Tensor> parts =
            product.split_with_sizes(at::IntArrayRef(out_channels).slice(first, end - first));
        kernels.insert(kernels.end(), parts.begin(), parts.end());
      } else {
        kernels.push_back(product);
      }
      first = end;
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["grid_size"] = grid_size;
    ctx->saved_data["stack_ends"] = stack_ends;
    ctx->saved_data["out_channels"] = out_channels;
    return kernels;
  }

  static variable_list backward(AutogradContext* ctx, variable_list kernel_grads) {
    const int64_t grid_size = ctx->saved_data["grid_size"].toInt();
    const std::vector<int64_t> stack_ends = ctx->saved_data["stack_ends"].toIntVector();
    const std::vector<int64_t> out_channels = ctx->saved_data["out_channels"].toIntVector();
    const int64_t layers = static_cast<int64_t>(out_channels.size());
    variable_list saved = ctx->get_saved_variables();
    const Tensor &sigma = saved[0], &exponent = saved[1], &neg_half_two_var = saved[2], &weights = saved[3],
                 &root = saved[4];

    // one gradient per forward input: the weights, the sigmas, sq_distance and the four non-tensor arguments
    variable_list grads(2 * layers + 5);
    std::vector<Tensor> envelope_grads;
    int64_t first = 0;
    for (size_t stack = 0; stack < stack_ends.size(); ++stack) {
      const int64_t end = stack_ends[stack];
      const Tensor &stack_weight = saved[5 + 2 * stack], &stack_envelope = saved[6 + 2 * stack];
      Tensor product_grad =
          end - first > 1
              ? at::cat(at::TensorList(kernel_grads).slice(first, end - first))  // split's backward
              : kernel_grads[first];
      Tensor weight_grad = product_grad * stack_envelope;  // the product's backward, as autograd's mul
      envelope_grads.push_back((product_grad * stack_weight).sum({1}, true));  // ... and its sum_to
      if (end - first > 1) {  // cat's backward
        std::vector<Tensor> parts =
            weight_grad.split_with_sizes(at::IntArrayRef(out_channels).slice(first, end - first));
        for (int64_t index = first; index < end; ++index) grads[index] = parts[index - first];
      } else {
        grads[first] = weight_grad;
      }
      first = end;
    }
    Tensor envelope_grad = (envelope_grads.size() > 1 ? at::cat(envelope_grads) : envelope_grads[0])
                               .view({-1, grid_size * grid_size});
    Tensor root_grad = envelope_grad * grid_size;
    Tensor clamped_grad = root_grad / (2 * root);  // sqrt's backward
    Tensor weights_grad =  // clamp_min's backward
        at::where(weights >= kSmallestWeight, clamped_grad, at::scalar_tensor(0., clamped_grad.options()));
    Tensor exponent_grad = at::_softmax_backward_data(weights_grad, weights, 1, exponent.scalar_type());
    // div's backward in its denominator, then sum_to its shape
    Tensor neg_half_two_var_grad = (-exponent_grad * (exponent / neg_half_two_var.view({-1, 1}))).sum({1}, true);
    Tensor sigma_grad = (-neg_half_two_var_grad).view({-1}) * (sigma * 2);  // rsub's and square's backward
    if (layers > 1) {
      std::vector<Tensor> parts = sigma_grad.split_with_sizes(out_channels);
      for (int64_t index = 0; index < layers; ++index) grads[layers + index] = parts[index];
    } else {
      grads[layers] = sigma_grad;
    }
    return grads;
  }
};

// The same kernels with the envelope, the products and their backward as plain loops over the filters: one
// autograd node, one allocation per output and no other operation. Equal to the native formulation to
// rounding (its own softmax and summation order), not bit for bit; contiguous CPU tensors only.
struct FusedFamilyKernels : public torch::autograd::Function<FusedFamilyKernels> {
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, Tensor sq_distance, int64_t grid_size,
                               double eps) {
    const int64_t layers = static_cast<int64_t>(inputs.size() / 2), cells = grid_size * grid_size;
    int64_t filters = 0;
    for (int64_t index = 0; index < layers; ++index) filters += inputs[index].size(0);
    Tensor envelope = at::empty({filters, cells}, inputs[0].options());  // U, one row per filter
    Tensor log_derivative = at::empty({filters, cells}, inputs[0].options());  // d log U / d sigma, 0 where clamped
    variable_list kernels;
    AT_DISPATCH_FLOATING_TYPES(inputs[0].scalar_type(), "fused_family_kernels", [&] {
      const scalar_t* distance = sq_distance.data_ptr<scalar_t>();
      scalar_t* envelope_row = envelope.data_ptr<scalar_t>();
      scalar_t* log_derivative_row = log_derivative.data_ptr<scalar_t>();
      std::vector<scalar_t> exponent(cells);
      for (int64_t index = 0; index < layers; ++index) {
        const Tensor& weight = inputs[index];
        const scalar_t* sigma = inputs[layers + index].data_ptr<scalar_t>();
        const int64_t per_filter = weight.numel() / weight.size(0), channels = per_filter / cells;
        Tensor kernel = at::empty_like(weight);
        const scalar_t* weight_data = weight.data_ptr<scalar_t>();
        scalar_t* kernel_data = kernel.data_ptr<scalar_t>();
        for (int64_t filter = 0; filter < weight.size(0); ++filter) {
          const scalar_t t = sigma[filter] * sigma[filter] + static_cast<scalar_t>(eps / 2);
          scalar_t largest = -std::numeric_limits<scalar_t>::infinity();
          for (int64_t cell = 0; cell < cells; ++cell) {
            exponent[cell] = -distance[cell] / t;
            largest = std::max(largest, exponent[cell]);
          }
          scalar_t total = 0, mean_exponent = 0;
          for (int64_t cell = 0; cell < cells; ++cell) total += std::exp(exponent[cell] - largest);
          for (int64_t cell = 0; cell < cells; ++cell) {
            const scalar_t weight_share = std::exp(exponent[cell] - largest) / total;
            envelope_row[cell] = grid_size * std::sqrt(std::max(weight_share, static_cast<scalar_t>(kSmallestWeight)));
            log_derivative_row[cell] = weight_share >= static_cast<scalar_t>(kSmallestWeight) ? 1 : 0;
            mean_exponent += weight_share * exponent[cell];
          }
          for (int64_t cell = 0; cell < cells; ++cell)
            log_derivative_row[cell] *= sigma[filter] / t * (mean_exponent - exponent[cell]);
          for (int64_t channel = 0; channel < channels; ++channel)
            for (int64_t cell = 0; cell < cells; ++cell) {
              const int64_t offset = filter * per_filter + channel * cells + cell;
              kernel_data[offset] = weight_data[offset] * envelope_row[cell];
            }
          envelope_row += cells;
          log_derivative_row += cells;
        }
        kernels.push_back(kernel);
      }
    });
    variable_list saved(inputs.begin(), inputs.begin() + layers);
    saved.push_back(envelope);
    saved.push_back(log_derivative);
    ctx->save_for_backward(saved);
    return kernels;
  }

  static variable_list backward(AutogradContext* ctx, variable_list kernel_grads) {
    variable_list saved = ctx->get_saved_variables();
    const int64_t layers = static_cast<int64_t>(saved.size()) - 2;
    const Tensor &envelope = saved[layers], &log_derivative = saved[layers + 1];
    const int64_t cells = envelope.size(1);
    variable_list grads(2 * layers + 3);  // the weights, the sigmas, sq_distance, grid_size, eps
    AT_DISPATCH_FLOATING_TYPES(envelope.scalar_type(), "fused_family_kernels_backward", [&] {
      const scalar_t* envelope_row = envelope.data_ptr<scalar_t>();
      const scalar_t* log_derivative_row = log_derivative.data_ptr<scalar_t>();
      for (int64_t index = 0; index < layers; ++index) {
        const Tensor& weight = saved[index];
        const Tensor product_grad = kernel_grads[index].contiguous();
        const int64_t per_filter = weight.numel() / weight.size(0), channels = per_filter / cells;
        Tensor weight_grad = at::empty_like(weight);
        Tensor sigma_grad = at::empty({weight.size(0)}, weight.options());
        const scalar_t *weight_data = weight.data_ptr<scalar_t>(), *grad_data = product_grad.data_ptr<scalar_t>();
        scalar_t *weight_grad_data = weight_grad.data_ptr<scalar_t>(), *sigma_grad_data = sigma_grad.data_ptr<scalar_t>();
        for (int64_t filter = 0; filter < weight.size(0); ++filter) {
          scalar_t sigma_sum = 0;
          for (int64_t channel = 0; channel < channels; ++channel)
            for (int64_t cell = 0; cell < cells; ++cell) {
              const int64_t offset = filter * per_filter + channel * cells + cell;
              weight_grad_data[offset] = grad_data[offset] * envelope_row[cell];
              sigma_sum += grad_data[offset] * weight_data[offset] * envelope_row[cell] * log_derivative_row[cell];
            }
          sigma_grad_data[filter] = sigma_sum;
          envelope_row += cells;
          log_derivative_row += cells;
        }
        grads[index] = weight_grad;
        grads[layers + index] = sigma_grad;
      }
    });
    return grads;
  }
};

variable_list fused_family_kernels(std::vector<Tensor> inputs, Tensor sq_distance, int64_t grid_size, double eps) {
  for (const Tensor& tensor : inputs)
    TORCH_CHECK(tensor.is_cpu() && tensor.is_contiguous(), "the fused family takes contiguous CPU tensors");
  return FusedFamilyKernels::apply(at::TensorList(inputs), sq_distance.contiguous(), grid_size, eps);
}

// What any one-node family costs before it computes anything: the same inputs and outputs as the families
// above, each output and each gradient a tensor of zeros of its shape, nothing else.
struct PlumbingOnly : public torch::autograd::Function<PlumbingOnly> {
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs) {
    const int64_t layers = static_cast<int64_t>(inputs.size() / 2);
    variable_list kernels;
    for (int64_t index = 0; index < layers; ++index) kernels.push_back(at::zeros_like(inputs[index]));
    ctx->save_for_backward(variable_list(inputs.begin(), inputs.end()));
    return kernels;
  }

  static variable_list backward(AutogradContext* ctx, variable_list kernel_grads) {
    variable_list saved = ctx->get_saved_variables();
    variable_list grads;
    for (const Tensor& input : saved) grads.push_back(at::zeros_like(input));
    return grads;
  }
};

variable_list plumbing_only(std::vector<Tensor> inputs) { return PlumbingOnly::apply(at::TensorList(inputs)); }

variable_list family_kernels(std::vector<Tensor> inputs, Tensor sq_distance, int64_t grid_size, double eps,
                             std::vector<int64_t> stack_ends, std::vector<int64_t> out_channels) {
  return FamilyKernels::apply(at::TensorList(inputs), sq_distance, grid_size, eps, stack_ends, out_channels);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("family_kernels", &family_kernels,
             "The product kernels of one family (weights, then sigmas, in its order) as one autograd node");
  module.def("fused_family_kernels", &fused_family_kernels,
             "The same kernels computed by loops over the filters (one autograd node, no other operation)");
  module.def("plumbing_only", &plumbing_only,
             "A node with a family's inputs and outputs that computes nothing (zeros): the floor of one node");
}
