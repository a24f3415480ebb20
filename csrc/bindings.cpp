// pybind11 module scar_kernels._C: the compiled CPU paths (pack builder, tree attention).
#include <torch/extension.h>

#include "scar_ext.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "SCAR compiled CPU paths: packed prefix-tree layout builder and tree attention.";
  m.def("build_pack", &scar::build_pack, pybind11::arg("coalitions"), pybind11::arg("owner"),
        pybind11::arg("seg_offsets"), pybind11::arg("seg_player"), pybind11::arg("seg_len"),
        pybind11::arg("prompt_len"), pybind11::arg("suffix_len"), pybind11::arg("cached_len"),
        "Packed prefix-tree layout of coalitions (the contract of scar_kernels.layout). Returns "
        "(gather, position_ids, horizon, readout, inverse, tree, node_start, node_len, node_parent, "
        "node_segment).");
  m.def("tree_attention", &scar::tree_attention, pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"),
        pybind11::arg("horizon"), pybind11::arg("scale"), pybind11::arg("prefix_k") = pybind11::none(),
        pybind11::arg("prefix_v") = pybind11::none(), pybind11::arg("softcap") = 0.0,
        pybind11::arg("sinks") = pybind11::none(), pybind11::arg("positions") = pybind11::none(),
        pybind11::arg("window") = 0, pybind11::arg("block_q") = 32, pybind11::arg("block_k") = 48,
        pybind11::arg("isa") = "auto",
        "softmax(cap(q k^T * scale) + mask) v where query q sees key k iff k <= q < horizon[k] (plus every "
        "prefix key), cap(x) = softcap * tanh(x / softcap) when softcap > 0 (0: no cap); sinks [H] or [H, N] adds "
        "one logit per query head (or head and query) to the softmax, with a zero value row (attention sinks); "
        "window > 0 (sliding window, with positions int32 [N], each packed token's position in its sequence) also "
        "hides key j from query i unless positions[i] - pos(j) < window, pos(j) = positions[j] (prefix key p: p). "
        "q [H, N, D], k/v [Hkv, N, D], horizon int32 [N], prefix_k/v [Hkv, P, D]. Tuning and testing options: "
        "block_q queries share one key list, block_k keys per online-softmax step, isa picks the vector build (auto, "
        "avx512, avx2, baseline).");
}
