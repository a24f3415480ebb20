// Declarations shared by the translation units of the scar_kernels._C extension.
//
// build_pack.cpp   -- the packed prefix-tree layout (contract: scar_kernels/layout.py, docs/design.md)
// tree_attention.cpp -- CPU forward of horizon-masked ("tree") attention
// bindings.cpp     -- the pybind11 module (the only file that includes torch/extension.h)
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>

namespace scar {

// Outputs of build_pack, in contract order: gather, position_ids, horizon, readout, inverse,
// tree, node_start, node_len, node_parent, node_segment.
using PackTuple = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor, at::Tensor, at::Tensor>;

PackTuple build_pack(const at::Tensor& coalitions, const at::Tensor& owner, const at::Tensor& seg_offsets,
                     const at::Tensor& seg_player, const at::Tensor& seg_len, const at::Tensor& prompt_len,
                     const at::Tensor& suffix_len, const at::Tensor& cached_len);

at::Tensor tree_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& horizon,
                          double scale, const std::optional<at::Tensor>& prefix_k,
                          const std::optional<at::Tensor>& prefix_v, double softcap,
                          const std::optional<at::Tensor>& sinks, const std::optional<at::Tensor>& positions,
                          int64_t window, int64_t block_q, int64_t block_k, const std::string& isa);

}  // namespace scar
