// CPU forward of tree ("horizon-masked") attention.
//
//   out = softmax(q k^T * scale + mask) v,   query q may attend key k  <=>  k <= q < horizon[k]
//   (plus every key of an optional cached prefix, visible to all queries).
//
// Flash-style: for each (head, query block) an online softmax runs over key blocks, so the extra memory is
// a block-transposed copy of the keys (O(N * D) per kv head) plus O(threads * block * (block + D)) scratch;
// no N x N mask or score matrix is ever built. A key block [k0, k1) is skipped for the query
// block [q0, q1) unless k0 <= q1 - 1 and max(horizon[k0:k1]) > q0; it needs no per-element mask when
// k1 - 1 <= q0 and min(horizon[k0:k1]) >= q1. Scores and the weighted sum of values are register-tiled
// micro-kernels on 8-float vectors (at::native::cpublas::gemm would be the alternative, but libtorch does
// not export it to extensions); exp is a branch-free polynomial so the softmax loop vectorises too.
//
// Non-finite keys: a key whose k or v row holds an inf or NaN must not reach a query that may not see it
// (masking its score to -inf is not enough: p = 0 times v = NaN is NaN), and must make every query that
// does see it non-finite (an inf key can also score -inf and silently get p = 0). The pass that transposes
// the keys checks each k and v row once; such a key's k and v are replaced by zeros in the kernel's copies,
// so attend_block only ever reads finite keys and its vectorised path is unchanged, and every query that
// sees the key (the horizon rule, or any query of the head for a prefix key) is set to NaN at the end.
#include "scar_ext.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace scar {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 0 (scores minus their running maximum), exact to a couple of ulp; 0 for x < -87
// (including -inf, i.e. masked keys). Written without branches or calls so the loops using it vectorise.
__attribute__((always_inline)) inline float exp_nonpositive(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float fx = std::floor(xc * 1.44269504088896341f + 0.5f);  // round(x / ln 2)
  float r = xc - fx * 0.693359375f;                               // Cody-Waite range reduction
  r = r - fx * -2.12194440e-4f;
  float y = 1.9875691500e-4f;  // Cephes expf minimax polynomial on [-ln2/2, ln2/2]
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;  // 2^fx, fx in [-126, 0]
  return x < -87.0f ? 0.0f : y * __builtin_bit_cast(float, bits);
}

// Helpers are always_inline so that they are compiled into each ISA clone of attend_block (GCC does not
// otherwise inline baseline-target functions into a clone built for another -march).
// 8-float vectors (GCC vector extension): AVX registers in the AVX2/AVX-512 clones below, pairs of SSE
// registers in the baseline clone. Loads and stores go through memcpy (no alignment assumption).
typedef float vf8 __attribute__((vector_size(32)));
__attribute__((always_inline)) inline vf8 load8(const float* p) {
  vf8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
__attribute__((always_inline)) inline void store8(float* p, vf8 v) {
  std::memcpy(p, &v, sizeof(v));
}

constexpr int64_t kKeyTile = 32;  // keys per score micro-tile; key blocks are padded to a multiple of it

// Scores of RB query rows against a 32-key tile: s[r][j0 + j] = q[r] . k[j0 + j], accumulated in registers.
template <int RB>
__attribute__((always_inline)) inline void score_tile(const float* q, int64_t D, const float* kt, int64_t ldk,
                                                      int64_t j0, float* s, int64_t lds) {
  vf8 acc[RB][4] = {};
  for (int64_t d = 0; d < D; ++d) {
    const float* kd = kt + d * ldk + j0;
    const vf8 k0 = load8(kd), k1 = load8(kd + 8), k2 = load8(kd + 16), k3 = load8(kd + 24);
    for (int r = 0; r < RB; ++r) {
      const float qv = q[r * D + d];
      acc[r][0] += qv * k0;
      acc[r][1] += qv * k1;
      acc[r][2] += qv * k2;
      acc[r][3] += qv * k3;
    }
  }
  for (int r = 0; r < RB; ++r) {
    for (int t = 0; t < 4; ++t) store8(s + r * lds + j0 + 8 * t, acc[r][t]);
  }
}

// acc[r][d0:d0+16] += sum_j p[r][j] * v[j][d0:d0+16] for RB rows, accumulated in registers.
template <int RB>
__attribute__((always_inline)) inline void value_tile(const float* p, int64_t lds, const float* v, int64_t D,
                                                      int64_t bk, int64_t d0, float* acc) {
  vf8 a[RB][2];
  for (int r = 0; r < RB; ++r) {
    a[r][0] = load8(acc + r * D + d0);
    a[r][1] = load8(acc + r * D + d0 + 8);
  }
  for (int64_t j = 0; j < bk; ++j) {
    const vf8 v0 = load8(v + j * D + d0), v1 = load8(v + j * D + d0 + 8);
    for (int r = 0; r < RB; ++r) {
      const float pr = p[r * lds + j];
      a[r][0] += pr * v0;
      a[r][1] += pr * v1;
    }
  }
  for (int r = 0; r < RB; ++r) {
    store8(acc + r * D + d0, a[r][0]);
    store8(acc + r * D + d0 + 8, a[r][1]);
  }
}

// One flash-attention step: a query block (bq rows of q) against one key block of bk keys, updating the
// running max `m`, sum `l` and unnormalised output `acc` ([bq][D]) of every query row.
// `kt` is the key block transposed and zero padded ([D][ldk], ldk a multiple of kKeyTile, so scores are
// unit-stride vector multiply-adds), `v` the value rows ([bk][D]), `s` scratch of bq * ldk floats.
// `hor` (horizon of the block's keys) is null when every query of the block sees every key.
// Compiled for several ISAs with runtime dispatch because setup.py builds for baseline x86-64. The clones
// name ISA levels, not CPU models: "arch=<cpu model>" clones dispatch on the CPU model and are never
// picked on, e.g., AMD processors.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void attend_block(
    const float* q, int64_t bq, int64_t D, const float* kt, int64_t ldk, const float* v, int64_t bk, const int32_t* hor,
    int64_t q0, int64_t k0, float scale, float* m, float* l, float* acc, float* s) {
  // 1. raw scores, two query rows per micro-tile (the register budget of AVX2).
  for (int64_t j0 = 0; j0 < ldk; j0 += kKeyTile) {
    int64_t i = 0;
    for (; i + 2 <= bq; i += 2) score_tile<2>(q + i * D, D, kt, ldk, j0, s + i * ldk, ldk);
    if (i < bq) score_tile<1>(q + i * D, D, kt, ldk, j0, s + i * ldk, ldk);
  }
  // 2. mask, online softmax; rescale each row's accumulator by exp(old max - new max).
  for (int64_t i = 0; i < bq; ++i) {
    float* row = s + i * ldk;
    const int64_t qpos = q0 + i;
    float mx = kNegInf;
    if (hor != nullptr) {
#pragma omp simd reduction(max : mx)
      for (int64_t j = 0; j < bk; ++j) {
        const bool visible = (k0 + j <= qpos) & (qpos < hor[j]);
        const float val = visible ? row[j] * scale : kNegInf;
        row[j] = val;
        mx = std::max(mx, val);
      }
    } else {
#pragma omp simd reduction(max : mx)
      for (int64_t j = 0; j < bk; ++j) {
        const float val = row[j] * scale;
        row[j] = val;
        mx = std::max(mx, val);
      }
    }
    if (mx == kNegInf) {  // this query sees no key of the block: it adds nothing
      std::fill(row, row + bk, 0.0f);
      continue;
    }
    const float m_new = std::max(m[i], mx);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < bk; ++j) {
      const float p = exp_nonpositive(row[j] - m_new);
      row[j] = p;
      sum += p;
    }
    const float alpha = m[i] == kNegInf ? 0.0f : std::exp(m[i] - m_new);
    if (alpha != 1.0f) {
      float* a = acc + i * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] *= alpha;
    }
    l[i] = l[i] * alpha + sum;
    m[i] = m_new;
  }
  // 3. acc += p v: four query rows x 16 value dims per micro-tile, then the odd value dims.
  const int64_t d_vec = D - D % 16;
  for (int64_t d0 = 0; d0 < d_vec; d0 += 16) {
    int64_t i = 0;
    for (; i + 4 <= bq; i += 4) value_tile<4>(s + i * ldk, ldk, v, D, bk, d0, acc + i * D);
    for (; i < bq; ++i) value_tile<1>(s + i * ldk, ldk, v, D, bk, d0, acc + i * D);
  }
  if (d_vec < D) {
    for (int64_t i = 0; i < bq; ++i) {
      const float* p = s + i * ldk;
      float* a = acc + i * D;
      for (int64_t j = 0; j < bk; ++j) {
        for (int64_t d = d_vec; d < D; ++d) a[d] += p[j] * v[j * D + d];
      }
    }
  }
}

// True when x[0:n] holds no inf or NaN, i.e. no exponent field is all ones (adding one to such a field
// carries into the sign bit). Integer OR reduction: vectorises and is not bound by add latency.
inline bool all_finite(const float* x, int64_t n) {
  uint32_t top = 0;
  for (int64_t d = 0; d < n; ++d) {
    uint32_t bits;
    std::memcpy(&bits, x + d, sizeof(bits));
    top |= (bits & 0x7f800000u) + 0x00800000u;
  }
  return (top & 0x80000000u) == 0;
}

// Keys of [n_heads, n, D] prepared for attend_block: transposed block-wise to [n_heads][n_blocks][D][ld]
// (ld = block rounded up to kKeyTile, zero padded) so that attend_block reads each key dimension with unit
// stride. A key whose k or v row holds an inf or NaN is "bad": its column of `kt` and its row of `v` are
// zeros, and `bad` / `block_bad` mark it so that the queries that see it are poisoned instead.
struct KeyBlocks {
  std::vector<float> kt;           // [n_heads][n_blocks][D][ld]
  at::Tensor v;                    // [n_heads, n, D]: the values, a zeroed copy of bad rows when there are any
  std::vector<uint8_t> bad;        // [n_heads][n]: the key is bad
  std::vector<uint8_t> block_bad;  // [n_heads][n_blocks]: the block holds a bad key
  std::vector<uint8_t> head_bad;   // [n_heads]: the head holds a bad key
};

KeyBlocks prepare_key_blocks(const at::Tensor& k_t, const at::Tensor& v_t, int64_t block, int64_t ld) {
  const int64_t n_heads = k_t.size(0), n = k_t.size(1), D = k_t.size(2);
  const int64_t n_blocks = (n + block - 1) / block;
  const float* k = k_t.data_ptr<float>();
  const float* v = v_t.data_ptr<float>();
  KeyBlocks out;
  out.kt.assign(static_cast<size_t>(n_heads * n_blocks * D * ld), 0.0f);
  out.bad.assign(static_cast<size_t>(n_heads * n), 0);
  out.block_bad.assign(static_cast<size_t>(n_heads * n_blocks), 0);
  out.head_bad.assign(static_cast<size_t>(n_heads), 0);
  at::parallel_for(0, n_heads * n_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t hb = begin; hb < end; ++hb) {
      const int64_t h = hb / n_blocks, b = hb % n_blocks;
      const int64_t k0 = b * block, k1 = std::min(n, k0 + block);
      float* dst = out.kt.data() + hb * D * ld;
      for (int64_t j = k0; j < k1; ++j) {
        const float* src = k + (h * n + j) * D;
        if (!(all_finite(src, D) && all_finite(v + (h * n + j) * D, D))) {
          out.bad[h * n + j] = 1;  // its column stays zero
          out.block_bad[hb] = 1;
          continue;
        }
        for (int64_t d = 0; d < D; ++d) dst[d * ld + (j - k0)] = src[d];
      }
    }
  });
  bool any_bad = false;
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t b = 0; b < n_blocks; ++b) out.head_bad[h] |= out.block_bad[h * n_blocks + b];
    any_bad = any_bad || out.head_bad[h];
  }
  if (!any_bad) {
    out.v = v_t;
    return out;
  }
  out.v = v_t.clone();  // rare path: never write into the caller's tensor
  float* vc = out.v.data_ptr<float>();
  for (int64_t t = 0; t < n_heads * n; ++t) {
    if (out.bad[t]) std::fill(vc + t * D, vc + (t + 1) * D, 0.0f);
  }
  return out;
}

void check_qkv(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "tree_attention: ", name, " must be a CPU tensor");
  TORCH_CHECK_TYPE(t.scalar_type() != at::kDouble, "tree_attention: ", name,
                   " is float64, which the tree-attention kernels do not support (they take float32, float16 or "
                   "bfloat16); score float64 models with attention=\"mask\" (the dense-mask path)");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
                   "tree_attention: ", name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 3, "tree_attention: ", name, " must be 3-D [heads, tokens, head_dim], got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), "tree_attention: ", name, " must be contiguous");
}

}  // namespace

at::Tensor tree_attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                          const at::Tensor& horizon, double scale_d, const std::optional<at::Tensor>& prefix_k_in,
                          const std::optional<at::Tensor>& prefix_v_in, int64_t block_q, int64_t block_k) {
  check_qkv(q_in, "q");
  check_qkv(k_in, "k");
  check_qkv(v_in, "v");
  const auto dtype = q_in.scalar_type();
  TORCH_CHECK_VALUE(k_in.scalar_type() == dtype && v_in.scalar_type() == dtype,
                    "tree_attention: q, k and v must have the same dtype, got ", dtype, ", ", k_in.scalar_type(), ", ",
                    v_in.scalar_type());
  const int64_t H = q_in.size(0), N = q_in.size(1), D = q_in.size(2);
  const int64_t Hkv = k_in.size(0);
  TORCH_CHECK_VALUE(k_in.sizes() == v_in.sizes(), "tree_attention: k and v must have the same shape, got ",
                    k_in.sizes(), " and ", v_in.sizes());
  TORCH_CHECK_VALUE(k_in.size(1) == N && k_in.size(2) == D, "tree_attention: k must be [Hkv, ", N, ", ", D,
                    "] to match q ", q_in.sizes(), ", got ", k_in.sizes());
  TORCH_CHECK_VALUE(Hkv >= 1 && H % Hkv == 0, "tree_attention: the number of query heads (", H,
                    ") must be a multiple of the number of key/value heads (", Hkv, ")");
  TORCH_CHECK_VALUE(D >= 1, "tree_attention: head_dim must be >= 1");
  TORCH_CHECK_VALUE(std::isfinite(scale_d), "tree_attention: scale must be finite, got ", scale_d);
  TORCH_CHECK_VALUE(block_q >= 1 && block_k >= 1, "tree_attention: block sizes must be >= 1");
  TORCH_CHECK_VALUE(horizon.device().is_cpu() && horizon.scalar_type() == at::kInt,
                    "tree_attention: horizon must be a CPU int32 tensor, got ", horizon.scalar_type());
  TORCH_CHECK_VALUE(horizon.dim() == 1 && horizon.size(0) == N, "tree_attention: horizon must have shape [", N,
                    "], got ", horizon.sizes());
  TORCH_CHECK_VALUE(horizon.is_contiguous(), "tree_attention: horizon must be contiguous");
  TORCH_CHECK_VALUE(N < std::numeric_limits<int32_t>::max(), "tree_attention: too many tokens for int32 horizon");
  const int32_t* hz = horizon.data_ptr<int32_t>();
  for (int64_t t = 0; t < N; ++t) {
    TORCH_CHECK_VALUE(hz[t] > t && hz[t] <= N, "tree_attention: horizon[", t, "] = ", hz[t], " must satisfy ", t,
                      " < horizon <= ", N);
  }
  TORCH_CHECK_VALUE(prefix_k_in.has_value() == prefix_v_in.has_value(),
                    "tree_attention: give both prefix_k and prefix_v or neither");
  int64_t P = 0;
  if (prefix_k_in.has_value()) {
    check_qkv(*prefix_k_in, "prefix_k");
    check_qkv(*prefix_v_in, "prefix_v");
    TORCH_CHECK_VALUE(prefix_k_in->scalar_type() == dtype && prefix_v_in->scalar_type() == dtype,
                      "tree_attention: prefix_k and prefix_v must have the dtype of q (", dtype, ")");
    TORCH_CHECK_VALUE(prefix_k_in->sizes() == prefix_v_in->sizes(),
                      "tree_attention: prefix_k and prefix_v must have the same shape, got ", prefix_k_in->sizes(),
                      " and ", prefix_v_in->sizes());
    TORCH_CHECK_VALUE(prefix_k_in->size(0) == Hkv && prefix_k_in->size(2) == D, "tree_attention: prefix_k must be [",
                      Hkv, ", P, ", D, "], got ", prefix_k_in->sizes());
    P = prefix_k_in->size(1);
  }

  // fp16 / bf16: compute in fp32 and return the input dtype.
  const at::Tensor q = q_in.to(at::kFloat).contiguous();
  const at::Tensor k = k_in.to(at::kFloat).contiguous();
  const at::Tensor v = v_in.to(at::kFloat).contiguous();
  at::Tensor pk, pv;
  if (P > 0) {
    pk = prefix_k_in->to(at::kFloat).contiguous();
    pv = prefix_v_in->to(at::kFloat).contiguous();
  }
  at::Tensor out = at::empty({H, N, D}, q.options());
  if (N == 0 || H == 0) return out.to(dtype);

  const int64_t BQ = std::min(block_q, N), BK = std::min(block_k, N);
  const int64_t n_qb = (N + BQ - 1) / BQ, n_kb = (N + BK - 1) / BK;
  std::vector<int32_t> hmax(n_kb), hmin(n_kb);
  for (int64_t kb = 0; kb < n_kb; ++kb) {
    const int64_t k0 = kb * BK, k1 = std::min(N, k0 + BK);
    hmax[kb] = *std::max_element(hz + k0, hz + k1);
    hmin[kb] = *std::min_element(hz + k0, hz + k1);
  }
  const float scale = static_cast<float>(scale_d);
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t group = H / Hkv;
  const int64_t PB = std::min(std::max<int64_t>(P, 1), BK);  // prefix key block size

  auto padded = [](int64_t b) { return (b + kKeyTile - 1) / kKeyTile * kKeyTile; };
  const int64_t ldk = padded(BK), ldp = padded(PB);
  const KeyBlocks keys = prepare_key_blocks(k, v, BK, ldk);
  const KeyBlocks prefix = P > 0 ? prepare_key_blocks(pk, pv, PB, ldp) : KeyBlocks();
  const float* kt = keys.kt.data();
  const float* vp = keys.v.data_ptr<float>();
  const uint8_t* bad = keys.bad.data();
  const float* pkt = P > 0 ? prefix.kt.data() : nullptr;
  const float* pvp = P > 0 ? prefix.v.data_ptr<float>() : nullptr;
  const int64_t n_pb = P > 0 ? (P + PB - 1) / PB : 0;
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

  const int n_threads = std::max(1, at::get_num_threads());
#pragma omp parallel num_threads(n_threads)
  {
    std::vector<float> s(BQ * std::max(ldk, ldp)), m(BQ), l(BQ), acc(BQ * D);
    std::vector<uint8_t> poisoned(BQ);  // the query sees a key with an inf or NaN
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t qb = 0; qb < n_qb; ++qb) {
        const int64_t hk = h / group;
        const int64_t q0 = qb * BQ, q1 = std::min(N, q0 + BQ), bq = q1 - q0;
        const float* qblk = qp + (h * N + q0) * D;
        std::fill(m.begin(), m.begin() + bq, kNegInf);
        std::fill(l.begin(), l.begin() + bq, 0.0f);
        std::fill(acc.begin(), acc.begin() + bq * D, 0.0f);
        std::fill(poisoned.begin(), poisoned.begin() + bq, P > 0 ? prefix.head_bad[hk] : 0);
        for (int64_t pb = 0; pb < n_pb; ++pb) {  // cached prefix: visible to every query
          const int64_t p0 = pb * PB, bk = std::min(P, p0 + PB) - p0;
          attend_block(qblk, bq, D, pkt + (hk * n_pb + pb) * D * ldp, ldp, pvp + (hk * P + p0) * D, bk, nullptr, q0, 0,
                       scale, m.data(), l.data(), acc.data(), s.data());
        }
        const int64_t last_kb = (q1 - 1) / BK;  // key blocks past the last query are never visible
        for (int64_t kb = 0; kb <= last_kb; ++kb) {
          if (hmax[kb] <= q0) continue;  // every key's subtree ends before this query block
          const int64_t k0 = kb * BK, k1 = std::min(N, k0 + BK);
          const bool full = (k1 - 1 <= q0) && (hmin[kb] >= q1);
          attend_block(qblk, bq, D, kt + (hk * n_kb + kb) * D * ldk, ldk, vp + (hk * N + k0) * D, k1 - k0,
                       full ? nullptr : hz + k0, q0, k0, scale, m.data(), l.data(), acc.data(), s.data());
          if (keys.block_bad[hk * n_kb + kb]) {  // rare path: mark the queries that see a bad key (j <= q < hz)
            for (int64_t j = k0; j < k1; ++j) {
              if (!bad[hk * N + j]) continue;
              for (int64_t i = std::max(j, q0); i < std::min<int64_t>(hz[j], q1); ++i) poisoned[i - q0] = 1;
            }
          }
        }
        float* oblk = op + (h * N + q0) * D;
        for (int64_t i = 0; i < bq; ++i) {
          const float inv = poisoned[i] ? kNaN : 1.0f / l[i];  // l > 0: every query sees at least itself
          for (int64_t d = 0; d < D; ++d) oblk[i * D + d] = acc[i * D + d] * inv;
        }
      }
    }
  }
  return dtype == at::kFloat ? out : out.to(dtype);
}

}  // namespace scar
