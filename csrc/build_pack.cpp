// build_pack: coalition bitsets -> packed prefix-tree (trie) layout.
//
// Implements the pack-layout contract shared with the Python reference scar_kernels.layout.build_pack_reference
// (both must return identical tensors). Work and memory are linear in the input plus output size:
//   1. validate every input (dtype, contiguity, shape, ranges) before reading any data-dependent index;
//   2. dedupe coalitions per owner by hashing their bit rows (first-occurrence numbering);
//   3. build one trie per response with a hash map (parent node, segment) -> child;
//   4. order children (segment ascending, suffix leaf last) with a counting sort and lay the forest out
//      in depth-first preorder with an explicit stack (no recursion, so no depth limit);
//   5. emit per-token gather / position / horizon / tree and per-coalition readout / inverse.
#include "scar_ext.h"

#include <cstdint>
#include <limits>
#include <vector>

namespace scar {
namespace {

constexpr int64_t kSuffixSegment = -2;  // node_segment of a suffix leaf
constexpr int64_t kRootSegment = -1;    // node_segment of a root

inline uint64_t mix64(uint64_t x) {
  // splitmix64 finaliser: cheap and well distributed for the open-addressing tables below.
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline size_t table_capacity(int64_t n_items) {
  size_t cap = 16;
  while (cap < static_cast<size_t>(n_items) * 2 + 1) cap <<= 1;  // load factor <= 1/2
  return cap;
}

void check_1d_int64(const at::Tensor& t, const char* name, int64_t expected_len) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kLong, "build_pack: ", name, " must be int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), "build_pack: ", name, " must be a CPU tensor");
  TORCH_CHECK_VALUE(t.dim() == 1, "build_pack: ", name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), "build_pack: ", name, " must be contiguous");
  if (expected_len >= 0) {
    TORCH_CHECK_VALUE(t.size(0) == expected_len, "build_pack: ", name, " must have length ", expected_len, ", got ",
                      t.size(0));
  }
}

// Open-addressing hash map from (parent node, segment) to child node; nodes are only ever added.
class ChildMap {
 public:
  explicit ChildMap(int64_t expected) : mask_(table_capacity(expected) - 1), slots_(mask_ + 1) {}

  // Returns the child of (parent, seg), creating it with id `next_id` when absent (created = true).
  int64_t find_or_insert(int64_t parent, int64_t seg, int64_t next_id, bool& created) {
    if (size_ * 2 + 2 > slots_.size()) grow();
    size_t i = slot_of(parent, seg);
    while (slots_[i].child >= 0) {
      if (slots_[i].parent == parent && slots_[i].seg == seg) {
        created = false;
        return slots_[i].child;
      }
      i = (i + 1) & mask_;
    }
    slots_[i] = Slot{parent, seg, next_id};
    ++size_;
    created = true;
    return next_id;
  }

 private:
  struct Slot {
    int64_t parent = -1, seg = -1, child = -1;
  };
  size_t slot_of(int64_t parent, int64_t seg) const {
    return mix64(static_cast<uint64_t>(parent) * 0x100000001b3ULL ^ static_cast<uint64_t>(seg)) & mask_;
  }
  void grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    mask_ = old.size() * 2 - 1;
    slots_.assign(mask_ + 1, Slot{});
    for (const Slot& s : old) {
      if (s.child < 0) continue;
      size_t i = slot_of(s.parent, s.seg);
      while (slots_[i].child >= 0) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  size_t mask_;
  std::vector<Slot> slots_;
  size_t size_ = 0;
};

}  // namespace

PackTuple build_pack(const at::Tensor& coalitions, const at::Tensor& owner, const at::Tensor& seg_offsets,
                     const at::Tensor& seg_player, const at::Tensor& seg_len, const at::Tensor& prompt_len,
                     const at::Tensor& suffix_len, const at::Tensor& cached_len) {
  // ---- 1. validation: shapes and dtypes first, then values, so every later index is in range ----
  TORCH_CHECK_VALUE(coalitions.scalar_type() == at::kBool, "build_pack: coalitions must be bool, got ",
                    coalitions.scalar_type());
  TORCH_CHECK_VALUE(coalitions.device().is_cpu(), "build_pack: coalitions must be a CPU tensor");
  TORCH_CHECK_VALUE(coalitions.dim() == 2, "build_pack: coalitions must be 2-D [C, n_max], got shape ",
                    coalitions.sizes());
  TORCH_CHECK_VALUE(coalitions.is_contiguous(), "build_pack: coalitions must be contiguous");
  const int64_t C = coalitions.size(0);
  const int64_t n_max = coalitions.size(1);
  check_1d_int64(seg_offsets, "seg_offsets", -1);
  TORCH_CHECK_VALUE(seg_offsets.size(0) >= 1, "build_pack: seg_offsets must have length R+1 >= 1");
  const int64_t R = seg_offsets.size(0) - 1;
  check_1d_int64(owner, "owner", C);
  check_1d_int64(seg_player, "seg_player", -1);
  const int64_t S = seg_player.size(0);
  check_1d_int64(seg_len, "seg_len", S);
  check_1d_int64(prompt_len, "prompt_len", R);
  check_1d_int64(suffix_len, "suffix_len", R);
  check_1d_int64(cached_len, "cached_len", R);

  const int64_t* off = seg_offsets.data_ptr<int64_t>();
  const int64_t* own = owner.data_ptr<int64_t>();
  const int64_t* splayer = seg_player.data_ptr<int64_t>();
  const int64_t* slen = seg_len.data_ptr<int64_t>();
  const int64_t* plen = prompt_len.data_ptr<int64_t>();
  const int64_t* sfx = suffix_len.data_ptr<int64_t>();
  const int64_t* cached = cached_len.data_ptr<int64_t>();
  const bool* bits = coalitions.data_ptr<bool>();

  // Lengths are bounded so that every sum below stays far from int64 overflow.
  constexpr int64_t kMaxLen = int64_t(1) << 40;
  TORCH_CHECK_VALUE(off[0] == 0, "build_pack: seg_offsets[0] must be 0, got ", off[0]);
  TORCH_CHECK_VALUE(off[R] == S, "build_pack: seg_offsets[R] must equal len(seg_player) = ", S, ", got ", off[R]);
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK_VALUE(off[r] <= off[r + 1], "build_pack: seg_offsets must be non-decreasing (index ", r, ")");
  }
  std::vector<int64_t> n_players(R, 0), src_base(R + 1, 0), seg_src(S, 0);
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK_VALUE(plen[r] >= 1 && plen[r] <= kMaxLen, "build_pack: prompt_len[", r, "] must be >= 1, got ",
                      plen[r]);
    TORCH_CHECK_VALUE(cached[r] >= 0 && cached[r] < plen[r], "build_pack: cached_len[", r,
                      "] must satisfy 0 <= cached_len < prompt_len = ", plen[r], ", got ", cached[r]);
    TORCH_CHECK_VALUE(sfx[r] >= 0 && sfx[r] <= kMaxLen, "build_pack: suffix_len[", r, "] must be >= 0, got ", sfx[r]);
    int64_t pos = plen[r];  // offset inside response r's source buffer
    for (int64_t s = off[r]; s < off[r + 1]; ++s) {
      TORCH_CHECK_VALUE(slen[s] >= 1 && slen[s] <= kMaxLen, "build_pack: seg_len[", s, "] must be >= 1, got ", slen[s]);
      if (splayer[s] != -1) {
        TORCH_CHECK_VALUE(splayer[s] == n_players[r], "build_pack: seg_player[", s, "] of response ", r,
                          " must be -1 (gap) or the next player index ", n_players[r], ", got ", splayer[s]);
        ++n_players[r];
      }
      seg_src[s] = pos;
      pos += slen[s];
      TORCH_CHECK_VALUE(pos <= kMaxLen, "build_pack: response ", r, " is too long");
    }
    src_base[r + 1] = src_base[r] + pos + sfx[r];
    TORCH_CHECK_VALUE(src_base[r + 1] <= kMaxLen, "build_pack: total source length is too large");
  }
  for (int64_t c = 0; c < C; ++c) {
    TORCH_CHECK_VALUE(own[c] >= 0 && own[c] < R, "build_pack: owner[", c, "] = ", own[c], " is out of range [0, ", R,
                      ")");
    const int64_t np = n_players[own[c]];
    // A response with more players than coalition columns may exist, but must not own a coalition.
    TORCH_CHECK_VALUE(np <= n_max, "build_pack: response ", own[c], " has ", np, " players but coalitions has only ",
                      n_max, " columns");
    for (int64_t j = np; j < n_max; ++j) {
      TORCH_CHECK_VALUE(!bits[c * n_max + j], "build_pack: coalitions[", c, ", ", j, "] is True but response ", own[c],
                        " has only ", np, " players");
    }
  }

  // ---- 2. dedupe coalitions per owner: pack rows into 64-bit words and hash them ----
  const int64_t W = (n_max + 63) / 64;
  std::vector<uint64_t> words(static_cast<size_t>(C * W), 0);
  for (int64_t c = 0; c < C; ++c) {
    uint64_t* w = words.data() + c * W;
    const bool* row = bits + c * n_max;
    for (int64_t j = 0; j < n_max; ++j) {
      if (row[j]) w[j >> 6] |= uint64_t(1) << (j & 63);
    }
  }
  std::vector<int64_t> inverse_v(C), rep_row;  // rep_row[d] = first input row of distinct coalition d
  {
    const size_t cap = table_capacity(C);
    const size_t mask = cap - 1;
    std::vector<int64_t> table(cap, -1);  // slot -> distinct id
    std::vector<uint64_t> hashes;         // hash of each distinct coalition
    for (int64_t c = 0; c < C; ++c) {
      const uint64_t* w = words.data() + c * W;
      uint64_t h = mix64(static_cast<uint64_t>(own[c]));
      for (int64_t i = 0; i < W; ++i) h = mix64(h ^ w[i]);
      size_t slot = h & mask;
      int64_t found = -1;
      while (table[slot] >= 0) {
        const int64_t d = table[slot];
        const int64_t rc = rep_row[d];
        if (hashes[d] == h && own[rc] == own[c]) {
          const uint64_t* rw = words.data() + rc * W;
          bool same = true;
          for (int64_t i = 0; i < W && same; ++i) same = rw[i] == w[i];
          if (same) {
            found = d;
            break;
          }
        }
        slot = (slot + 1) & mask;
      }
      if (found < 0) {
        found = static_cast<int64_t>(rep_row.size());
        rep_row.push_back(c);
        hashes.push_back(h);
        table[slot] = found;
      }
      inverse_v[c] = found;
    }
  }
  const int64_t D = static_cast<int64_t>(rep_row.size());

  // ---- 3. build the forest; node ids in creation order (a parent is always created before a child) ----
  // Roots are nodes 0..R-1. Node arrays in creation order:
  std::vector<int64_t> parent(R, -1), segment(R, kRootSegment), response(R), length(R), pos_start(R);
  for (int64_t r = 0; r < R; ++r) {
    response[r] = r;
    length[r] = plen[r] - cached[r];
    pos_start[r] = cached[r];
  }
  std::vector<int64_t> end_node(D), leaf_node(D, -1);
  {
    int64_t expected = 0;
    for (int64_t d = 0; d < D; ++d) expected += off[own[rep_row[d]] + 1] - off[own[rep_row[d]]];
    ChildMap children(expected / 4 + 16);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t c = rep_row[d];
      const int64_t r = own[c];
      const uint64_t* w = words.data() + c * W;
      int64_t node = r;
      for (int64_t s = off[r]; s < off[r + 1]; ++s) {
        const int64_t p = splayer[s];
        if (p >= 0 && !((w[p >> 6] >> (p & 63)) & 1)) continue;
        bool created = false;
        const int64_t next = static_cast<int64_t>(parent.size());
        const int64_t child = children.find_or_insert(node, s, next, created);
        if (created) {
          parent.push_back(node);
          segment.push_back(s);
          response.push_back(r);
          length.push_back(slen[s]);
          pos_start.push_back(pos_start[node] + length[node]);
        }
        node = child;
      }
      end_node[d] = node;
      if (sfx[r] > 0) {
        // Distinct coalitions of one response have distinct segment sets, hence distinct end nodes:
        // each suffix leaf is new.
        leaf_node[d] = static_cast<int64_t>(parent.size());
        parent.push_back(node);
        segment.push_back(kSuffixSegment);
        response.push_back(r);
        length.push_back(sfx[r]);
        pos_start.push_back(pos_start[node] + length[node]);
      }
    }
  }
  const int64_t M = static_cast<int64_t>(parent.size());

  // ---- 4. children in order (segment ascending, suffix leaf last): counting sort by key, then bucket
  //         by parent (stable), giving a CSR child list per node ----
  std::vector<int64_t> child_off(M + 1, 0), child_list(M > R ? M - R : 0);
  {
    std::vector<int64_t> key_count(S + 2, 0);
    auto key_of = [&](int64_t u) { return segment[u] == kSuffixSegment ? S : segment[u]; };
    for (int64_t u = R; u < M; ++u) ++key_count[key_of(u) + 1];
    for (int64_t i = 0; i <= S; ++i) key_count[i + 1] += key_count[i];
    std::vector<int64_t> by_key(M - R);
    for (int64_t u = R; u < M; ++u) by_key[key_count[key_of(u)]++] = u;
    for (int64_t u = R; u < M; ++u) ++child_off[parent[u] + 1];
    for (int64_t u = 0; u < M; ++u) child_off[u + 1] += child_off[u];
    std::vector<int64_t> fill(child_off.begin(), child_off.end() - 1);
    for (int64_t u : by_key) child_list[fill[parent[u]]++] = u;
  }
  // Subtree token counts, bottom-up (reverse creation order visits children before parents).
  std::vector<int64_t> subtree(length);
  for (int64_t u = M - 1; u >= R; --u) subtree[parent[u]] += subtree[u];
  int64_t N = 0;
  for (int64_t r = 0; r < R; ++r) N += subtree[r];
  TORCH_CHECK_VALUE(N < std::numeric_limits<int32_t>::max(), "build_pack: the pack has ", N,
                    " tokens; horizon is int32, so at most 2^31-1 are supported");

  // Preorder: explicit stack, children pushed in reverse so they pop in order.
  std::vector<int64_t> order;  // preorder position -> creation id
  order.reserve(M);
  std::vector<int64_t> pre(M), start(M);
  {
    std::vector<int64_t> stack;
    int64_t cursor = 0;
    for (int64_t r = 0; r < R; ++r) {
      stack.push_back(r);
      while (!stack.empty()) {
        const int64_t u = stack.back();
        stack.pop_back();
        pre[u] = static_cast<int64_t>(order.size());
        order.push_back(u);
        start[u] = cursor;
        cursor += length[u];
        for (int64_t i = child_off[u + 1] - 1; i >= child_off[u]; --i) stack.push_back(child_list[i]);
      }
    }
  }

  // ---- 5. outputs ----
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  at::Tensor gather = at::empty({N}, i64), position = at::empty({N}, i64), tree = at::empty({N}, i64);
  at::Tensor horizon = at::empty({N}, at::TensorOptions().dtype(at::kInt));
  at::Tensor readout = at::empty({C}, i64), inverse = at::empty({C}, i64);
  at::Tensor node_start = at::empty({M}, i64), node_len = at::empty({M}, i64);
  at::Tensor node_parent = at::empty({M}, i64), node_segment = at::empty({M}, i64);
  int64_t* g = gather.data_ptr<int64_t>();
  int64_t* pos = position.data_ptr<int64_t>();
  int64_t* tr = tree.data_ptr<int64_t>();
  int32_t* hz = horizon.data_ptr<int32_t>();
  int64_t* ns = node_start.data_ptr<int64_t>();
  int64_t* nl = node_len.data_ptr<int64_t>();
  int64_t* np = node_parent.data_ptr<int64_t>();
  int64_t* nseg = node_segment.data_ptr<int64_t>();
  for (int64_t i = 0; i < M; ++i) {
    const int64_t u = order[i];
    const int64_t r = response[u];
    ns[i] = start[u];
    nl[i] = length[u];
    np[i] = parent[u] < 0 ? -1 : pre[parent[u]];
    nseg[i] = segment[u];
    int64_t src;  // flat source index of the node's first token
    if (segment[u] == kRootSegment) {
      src = src_base[r] + cached[r];
    } else if (segment[u] == kSuffixSegment) {
      src = src_base[r + 1] - sfx[r];
    } else {
      src = src_base[r] + seg_src[segment[u]];
    }
    const int32_t end = static_cast<int32_t>(start[u] + subtree[u]);
    for (int64_t t = 0; t < length[u]; ++t) {
      g[start[u] + t] = src + t;
      pos[start[u] + t] = pos_start[u] + t;
      tr[start[u] + t] = r;
      hz[start[u] + t] = end;
    }
  }
  int64_t* ro = readout.data_ptr<int64_t>();
  int64_t* inv = inverse.data_ptr<int64_t>();
  for (int64_t c = 0; c < C; ++c) {
    const int64_t d = inverse_v[c];
    const int64_t last = leaf_node[d] >= 0 ? leaf_node[d] : end_node[d];
    ro[c] = start[last] + length[last] - 1;
    inv[c] = d;
  }
  return PackTuple(gather, position, horizon, readout, inverse, tree, node_start, node_len, node_parent, node_segment);
}

}  // namespace scar
