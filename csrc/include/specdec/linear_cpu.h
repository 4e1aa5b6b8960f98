// Products that other CPU kernels (csrc/cpu/features.cpp) hand to specdec::linear's kernel when it is the faster
// GEMM for their size (linear_isa.h: linear_small_product_rows), else to ATen's.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace specdec {

// out [M, N] = x [M, K] @ weight [N, K]^T (+ bias [N] or + residual [M, N], not both). x, weight, bias, residual
// and out share one floating dtype on the CPU. The kernel takes it when M is at most the dtype's small-product
// rows, weight has unit stride along K and out overlaps neither x nor the residual; the sum is then rounded to
// the dtype before the residual is added (as the reference compositions `z + F.linear(...)` round); ATen's
// addmm rounds once. Returns out.
at::Tensor& linear_product_out(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias = std::nullopt,
                               const std::optional<at::Tensor>& residual = std::nullopt);

// The same into a new tensor.
at::Tensor linear_product(const at::Tensor& x, const at::Tensor& weight);

}  // namespace specdec
