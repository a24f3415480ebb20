// CPU forward of tree ("horizon-masked") attention.
//
//   out = softmax(cap(q k^T * scale) + mask) v,   query q may attend key k  <=>  k <= q < horizon[k]
//   (plus every key of an optional cached prefix, visible to all queries), where cap(x) = softcap tanh(x / softcap)
//   when a logit soft-cap is given (Gemma 2) and cap(x) = x otherwise. With attention sinks (gpt-oss), the softmax of
//   query q in head h also holds one extra logit sinks[h] or sinks[h, q] (not scaled, not capped) whose value row
//   is zero: the online softmax starts from max = that logit and sum = 1 instead of -inf and 0. With a sliding
//   window (window > 0 and positions [N], each packed token's position in its sequence), q also sees a key only if
//   positions[q] - pos(key) < window, where pos(packed key j) = positions[j] and pos(prefix key p) = p.
//
// Flash-style, with the keys of each query block listed rather than tiled. A work item is a block of
// block_q queries [q0, q1) and one kv head (every query head of its group, so a grouped kv head is read once
// for all of them, never repeated). Its key list is the cached prefix, then every packed key j < q1 with
// horizon[j] > q0: in a preorder forest, the tokens on the path from the root to q0's node and the block's
// own tokens, found by scanning only the 64-key blocks whose largest horizon exceeds q0. No other key is
// visible to any query of the block, so the work is (list length) x (block rows): about 1.1-1.2x the visible
// (query, key) pairs on the packs of permutation sampling, against 1.7x for 64 x 64 tiles skipped by
// their horizon bounds (at N ~ 8k-16k). The list is cut into segments of block_k keys, one online-softmax step
// each; a segment needs no per-element mask when its last key is <= the first query and its smallest
// horizon >= the block's end (the prompt, for every query block past it).
//
// Window: it only hides keys at small positions. A key at a position <= min over the block's queries of
// (position - window) is left out of the block's key list (the front of a long prefix, early ancestors); a
// segment's leading keys below the window of every query of a query sub-block are skipped; and the element mask
// also compares each query's position - window with the key's position, unless every key of the segment lies
// within the window of every query of the sub-block. A window wider than every position difference is no window.
//
// Layout: each block's queries are transposed and pre-scaled (q^T [D][BQ]), so scores come out as
// s^T [keys][queries] from register micro-tiles that broadcast one key element against vectors of queries;
// key rows are read in place when a segment is a run of consecutive keys (the prompt, the block's own
// tokens) and from a per-segment copy of the rows otherwise: no transposed copy of k. The mask and the
// segment's running maximum per query are applied to each score micro-tile while it is still in registers,
// so the softmax statistics are vectors over queries and one pass over the scores (exp and sum) remains; p v
// runs on micro-tiles of query rows x value dims with the value rows read in place and the rescale by
// exp(old max - new max) folded into the accumulator load. The vector code is built for AVX-512, AVX2 and
// baseline x86-64 and picked at run time (setup.py builds for the baseline; the levels name ISA levels, not
// CPU models), each with the head dim as a compile-time constant for 64 and 128. exp is a branch-free
// polynomial so the softmax loops vectorise.
//
// Non-finite keys: a key whose k or v row holds an inf or NaN must not reach a query that may not see it
// (masking its score to -inf is not enough: p = 0 times v = NaN is NaN), and must make every query that
// does see it non-finite (an inf key can also score -inf and silently get p = 0). One pass flags such keys;
// the kernel reads a row of zeros in place of their k and v (the key lists and segments do not change, so
// every other output is bit-identical to the one with finite values there), and every query that sees one
// (the horizon rule, or any query of the head for a prefix key; with a window, only the queries within it) is set
// to NaN at the end.
#include "scar_ext.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace scar {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int32_t kNoEnd = std::numeric_limits<int32_t>::max();  // horizon of a cached-prefix key
constexpr int64_t kScanBlock = 64;  // keys per block of the horizon maxima that the key-list scan skips by

// Helpers are always_inline templates so that they are compiled into each ISA build of run_block (GCC does
// not otherwise inline baseline-target functions into a function built for another -march). Vectors are GCC
// vector extensions; loads and stores go through unaligned vector types and vectors are passed by reference
// (no vector-ABI dependence between the builds).
typedef float vf4 __attribute__((vector_size(16)));
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi4 __attribute__((vector_size(16)));
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef uint32_t vu4 __attribute__((vector_size(16)));
typedef uint32_t vu8 __attribute__((vector_size(32)));
typedef uint32_t vu16 __attribute__((vector_size(64)));

// Unaligned, aliasing views of the same vectors for loads and stores from float arrays.
typedef float vf4u __attribute__((vector_size(16), aligned(4), may_alias));
typedef float vf8u __attribute__((vector_size(32), aligned(4), may_alias));
typedef float vf16u __attribute__((vector_size(64), aligned(4), may_alias));

template <class V>
struct Unaligned;
template <>
struct Unaligned<vf4> {
  using type = vf4u;
};
template <>
struct Unaligned<vf8> {
  using type = vf8u;
};
template <>
struct Unaligned<vf16> {
  using type = vf16u;
};

template <class V>
__attribute__((always_inline)) inline void load(V& v, const float* p) {
  v = *reinterpret_cast<const typename Unaligned<V>::type*>(p);
}
template <class V>
__attribute__((always_inline)) inline void store(float* p, const V& v) {
  *reinterpret_cast<typename Unaligned<V>::type*>(p) = v;
}

// Tile shapes per instruction set: vectors of W floats; a query sub-block is QV vectors (BQ = QV * W
// queries); score micro-tiles are KR keys x BQ queries (KR * QV accumulators, with the QV running maxima and
// QV query vectors beside them) and p v micro-tiles IR query rows x NV vectors of value dims (IR * NV
// accumulators): at most 3/4 of the vector registers, so that nothing spills from the inner loops.
struct Avx512 {
  using V = vf16;
  using VI = vi16;
  using VU = vu16;
  static constexpr int W = 16, QV = 2, KR = 12, NV = 4, IR = 6;
};
struct Avx2 {
  using V = vf8;
  using VI = vi8;
  using VU = vu8;
  static constexpr int W = 8, QV = 2, KR = 5, NV = 2, IR = 6;
};
struct Baseline {
  using V = vf4;
  using VI = vi4;
  using VU = vu4;
  static constexpr int W = 4, QV = 4, KR = 2, NV = 2, IR = 6;
};

// The largest score of each query so far in the segment (QV vectors over queries).
template <class C>
struct RowMax {
  typename C::V v[C::QV];
};

// The per-element mask of a segment's scores: none, the horizon rule, or the horizon rule and the window.
enum Mask : int { kNoMask = 0, kHorizon = 1, kWindow = 2 };

// The key rows of a segment and what its mask reads: kpos, khz (packed index and horizon of each key), kw (its
// position) and qlo [BQ] (each query's position minus the window; padding lanes hold INT32_MIN).
struct SegKeys {
  const float* rows;  // stride D
  const int32_t* kpos;
  const int32_t* khz;
  const int32_t* kw;
  const int32_t* qlo;
};

// s^T[r][0:BQ] = k[r] . q^T[:, 0:BQ] for R key rows (row stride ldk), accumulated in registers; then, unless
// MASK is kNoMask, the scores of queries that may not see key r set to -inf (query r0 + i sees it iff kpos[r] <=
// r0 + i < khz[r], and with kWindow also qlo[i] < kw[r]), and every score folded into the running maxima mt.
template <class C, int R, int MASK>
__attribute__((always_inline)) inline void score_tile(const float* qt, int64_t D, const float* kr, int64_t ldk,
                                                      const int32_t* kpos, const int32_t* khz, const int32_t* kw,
                                                      const int32_t* qlo, int64_t r0, float* s, RowMax<C>& mt) {
  using V = typename C::V;
  using VI = typename C::VI;
  constexpr int QV = C::QV, W = C::W, BQ = QV * W;
  V acc[R][QV] = {};
  for (int64_t d = 0; d < D; ++d) {
    V qv[QV];
    for (int b = 0; b < QV; ++b) load(qv[b], qt + d * BQ + b * W);
    for (int r = 0; r < R; ++r) {
      const float kv = kr[r * ldk + d];
      for (int b = 0; b < QV; ++b) acc[r][b] += kv * qv[b];
    }
  }
  using VU = typename C::VU;
  const V neg_inf = V{} + kNegInf;
  VI ql[QV] = {};
  if constexpr (MASK == kWindow) {
    for (int b = 0; b < QV; ++b) std::memcpy(&ql[b], qlo + b * W, sizeof(VI));
  }
  for (int r = 0; r < R; ++r) {
    int32_t lo = 0;
    uint32_t width = 0;
    if constexpr (MASK != kNoMask) {  // [lo, lo + width): the queries in the key's horizon, relative to r0
      const int64_t a = kpos[r] - r0, e = khz[r] - r0;
      lo = static_cast<int32_t>(a < -1 ? -1 : a > BQ ? BQ : a);
      const int32_t hi = static_cast<int32_t>(e < -1 ? -1 : e > BQ ? BQ : e);
      width = hi > lo ? static_cast<uint32_t>(hi - lo) : 0u;
    }
    for (int b = 0; b < QV; ++b) {
      V x = acc[r][b];
      if constexpr (MASK != kNoMask) {
        // lane - lo < width as unsigned: one compare per vector (this form stays vectorised where GCC lowers
        // the helper before inlining it into a wider build, which two compares and a constant lane vector
        // would not)
        VI lane;  // query index within the sub-block
        for (int i = 0; i < W; ++i) lane[i] = b * W + i;
        lane -= lo;
        VI seen = reinterpret_cast<const VU&>(lane) < (VU{} + width);
        if constexpr (MASK == kWindow) seen &= ql[b] < (VI{} + kw[r]);
        x = seen ? x : neg_inf;
      }
      store(s + r * BQ + b * W, x);
      mt.v[b] = mt.v[b] < x ? x : mt.v[b];
    }
  }
}

// The last n < KR key rows of a segment: one tile of exactly n rows.
template <class C, int R, int MASK>
__attribute__((always_inline)) inline void score_tail(const float* qt, int64_t D, const float* kr, int64_t ldk,
                                                      const int32_t* kpos, const int32_t* khz, const int32_t* kw,
                                                      const int32_t* qlo, int64_t r0, float* s, RowMax<C>& mt,
                                                      int64_t n) {
  if constexpr (R >= 1) {
    if (n == R) {
      score_tile<C, R, MASK>(qt, D, kr, ldk, kpos, khz, kw, qlo, r0, s, mt);
    } else {
      score_tail<C, R - 1, MASK>(qt, D, kr, ldk, kpos, khz, kw, qlo, r0, s, mt, n);
    }
  }
}

// Scores s^T [cnt][BQ] of a segment's keys and their maxima per query.
template <class C, int MASK>
__attribute__((always_inline)) inline void score_segment(const float* qt, int64_t D, const SegKeys& sk, int64_t r0,
                                                         int64_t cnt, float* s, RowMax<C>& mt) {
  constexpr int64_t KR = C::KR, BQ = C::QV * C::W;
  int64_t c0 = 0;
  for (; c0 + KR <= cnt; c0 += KR) {
    score_tile<C, KR, MASK>(qt, D, sk.rows + c0 * D, D, sk.kpos + c0, sk.khz + c0, sk.kw + c0, sk.qlo, r0, s + c0 * BQ,
                            mt);
  }
  if (c0 < cnt) {
    score_tail<C, KR - 1, MASK>(qt, D, sk.rows + c0 * D, D, sk.kpos + c0, sk.khz + c0, sk.kw + c0, sk.qlo, r0,
                                s + c0 * BQ, mt, cnt - c0);
  }
}

// acc[r][d0:d0+NV*W] = alpha[r] * acc[r][...] + sum_c p[c][r] * v_c[d0:d0+NV*W] for IR query rows.
template <class C, int NV, int IR>
__attribute__((always_inline)) inline void value_tile(const float* p, const float* const* vrow, int64_t cnt, int64_t d0,
                                                      float* acc, int64_t D, const float* alpha) {
  using V = typename C::V;
  constexpr int W = C::W, BQ = C::QV * W;
  V a[IR][NV];
  for (int r = 0; r < IR; ++r) {
    for (int b = 0; b < NV; ++b) {
      load(a[r][b], acc + r * D + d0 + b * W);
      a[r][b] *= alpha[r];
    }
  }
  for (int64_t c = 0; c < cnt; ++c) {
    const float* vr = vrow[c] + d0;
    V vv[NV];
    for (int b = 0; b < NV; ++b) load(vv[b], vr + b * W);
    for (int r = 0; r < IR; ++r) {
      const float pr = p[c * BQ + r];
      for (int b = 0; b < NV; ++b) a[r][b] += pr * vv[b];
    }
  }
  for (int r = 0; r < IR; ++r) {
    for (int b = 0; b < NV; ++b) store(acc + r * D + d0 + b * W, a[r][b]);
  }
}

// The last n < IR query rows: one tile of exactly n rows.
template <class C, int NV, int IR>
__attribute__((always_inline)) inline void value_tail(const float* p, const float* const* vrow, int64_t cnt, int64_t d0,
                                                      float* acc, int64_t D, const float* alpha, int64_t n) {
  if constexpr (IR >= 1) {
    if (n == IR) {
      value_tile<C, NV, IR>(p, vrow, cnt, d0, acc, D, alpha);
    } else {
      value_tail<C, NV, IR - 1>(p, vrow, cnt, d0, acc, D, alpha, n);
    }
  }
}

// The keys c < seen_by(...) of a segment are all that query r0 + last can see: kpos is nondecreasing along a
// key list, and a key with kpos > query has p = 0 for it (skipping such terms leaves the sums unchanged).
inline int64_t seen_by(const int32_t* kpos, int64_t cnt, int64_t query) {
  while (cnt > 0 && kpos[cnt - 1] > query) --cnt;
  return cnt;
}

// Value dims [d0, d0 + NV * W) of the first nr query rows (r0 + i for row i); each tile of rows stops at the
// last key its last row can see.
template <class C, int NV>
__attribute__((always_inline)) inline void value_chunk(const float* p, const float* const* vrow, int64_t cnt,
                                                       const int32_t* kpos, int64_t r0, int64_t d0, float* acc,
                                                       int64_t D, const float* alpha, int64_t nr) {
  int64_t i = 0;
  for (; i + C::IR <= nr; i += C::IR) {
    const int64_t n = seen_by(kpos, cnt, r0 + i + C::IR - 1);
    value_tile<C, NV, C::IR>(p + i, vrow, n, d0, acc + i * D, D, alpha + i);
  }
  if (i < nr) {
    value_tail<C, NV, C::IR - 1>(p + i, vrow, seen_by(kpos, cnt, r0 + nr - 1), d0, acc + i * D, D, alpha + i, nr - i);
  }
}

// acc = alpha * acc + p v over every value dim of the first nr query rows r0, r0 + 1, ... (p is s^T:
// p[c * BQ + row]; kpos: the segment's key positions).
template <class C>
__attribute__((always_inline)) inline void value_update(const float* p, const float* const* vrow, int64_t cnt,
                                                        const int32_t* kpos, int64_t r0, float* acc, int64_t D,
                                                        const float* alpha, int64_t nr) {
  constexpr int64_t W = C::W, BQ = C::QV * W, WIDE = C::NV * W;
  int64_t d0 = 0;
  for (; d0 + WIDE <= D; d0 += WIDE) value_chunk<C, C::NV>(p, vrow, cnt, kpos, r0, d0, acc, D, alpha, nr);
  for (; d0 + W <= D; d0 += W) value_chunk<C, 1>(p, vrow, cnt, kpos, r0, d0, acc, D, alpha, nr);
  if (d0 < D) {  // odd head dims
    for (int64_t i = 0; i < nr; ++i) {
      float* a = acc + i * D;
      for (int64_t d = d0; d < D; ++d) a[d] *= alpha[i];
      for (int64_t c = 0; c < cnt; ++c) {
        const float pr = p[c * BQ + i];
        for (int64_t d = d0; d < D; ++d) a[d] += pr * vrow[c][d];
      }
    }
  }
}

// y = exp(x) for x <= 0 (scores minus their running maximum), within about an ulp; 0 for x < -87 (including
// -inf, i.e. masked keys, whose NaN intermediate values are discarded by the final select). x = n ln2 + r
// with n = round(x / ln2) from the float magic-number rounding t = x / ln2 + 1.5 * 2^23, whose low mantissa
// bits hold n (two's complement), so 2^n is those bits shifted into the exponent field; Cody-Waite reduction;
// exp(r) on [-ln2/2, ln2/2] by a degree-6 polynomial fitted for minimax relative error.
template <class C>
__attribute__((always_inline)) inline void exp_nonpositive(typename C::V& y, const typename C::V& x) {
  using V = typename C::V;
  using VI = typename C::VI;
  const V zero = {}, lowest = zero - 87.0f, magic = zero + 12582912.0f;  // 1.5 * 2^23
  const VI small = x < lowest;
  const V t = x * 1.44269504088896341f + magic;
  const V n = t - magic;
  V r = x - n * 0.693359375f;  // Cody-Waite range reduction
  r = r - n * -2.12194440e-4f;
  V p = zero + 1.3843651395e-3f;
  p = p * r + 8.3741564304e-3f;
  p = p * r + 4.1668001562e-2f;
  p = p * r + 1.6666431725e-1f;
  p = p * r + 4.9999994040e-1f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  VI bits;
  std::memcpy(&bits, &t, sizeof(V));
  bits = (bits << 23) + (127 << 23);  // 2^n, n in [-126, 0]
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  y = small ? zero : p * scale;
}

// Logit soft-capping of a segment's scores s^T [cnt][BQ] and of their maxima mt: x -> cap tanh(x / cap), the
// masked scores (-inf) left as they are. tanh(y) = sign(y) (1 - e) / (1 + e) with e = exp(-2 |y|) <= 1, so the
// exp above serves (absolute error about 1e-7 of cap). tanh is increasing, so the capped maxima stay maxima.
template <class C>
__attribute__((always_inline)) inline void softcap_vector(typename C::V& x, float cap, float inv_cap) {
  using V = typename C::V;
  using VI = typename C::VI;
  const V zero = {}, one = zero + 1.0f, neg_inf = zero + kNegInf;
  const V y = x * inv_cap;
  const VI negative = y < zero;
  const V a = negative ? zero - y : y;
  V e;
  exp_nonpositive<C>(e, zero - (a + a));
  const V t = (one - e) / (one + e) * cap;
  const VI masked = x == neg_inf;
  x = masked ? neg_inf : (negative ? zero - t : t);
}

template <class C>
__attribute__((always_inline)) inline void softcap_segment(float* s, int64_t cnt, RowMax<C>& mt, float cap) {
  using V = typename C::V;
  constexpr int QV = C::QV, W = C::W, BQ = QV * W;
  const float inv_cap = 1.0f / cap;
  for (int64_t c = 0; c < cnt; ++c) {
    for (int b = 0; b < QV; ++b) {
      V x;
      load(x, s + c * BQ + b * W);
      softcap_vector<C>(x, cap, inv_cap);
      store(s + c * BQ + b * W, x);
    }
  }
  for (int b = 0; b < QV; ++b) softcap_vector<C>(mt.v[b], cap, inv_cap);
}

// One online-softmax step over a segment's scores s^T [cnt][BQ] (scaled and masked), whose largest score per
// query is mt: replace the scores by p = exp(s - new max), update the running max m and sum l of every query,
// and return in alpha the factor exp(old max - new max) that the accumulators still have to be rescaled by.
// Vectors run over queries.
template <class C>
__attribute__((always_inline)) inline void softmax_step(float* s, int64_t cnt, const RowMax<C>& mt, float* m, float* l,
                                                        float* alpha) {
  using V = typename C::V;
  constexpr int QV = C::QV, W = C::W, BQ = QV * W;
  const V zero = {}, neg_inf = zero + kNegInf;
  V mu[QV], sum[QV];
  for (int b = 0; b < QV; ++b) {
    V m_old, a;
    load(m_old, m + b * W);
    const V m_new = m_old < mt.v[b] ? mt.v[b] : m_old;
    mu[b] = m_new == neg_inf ? zero : m_new;  // a query that has seen no key yet: p = exp(-inf) = 0
    const V diff = m_old - mu[b];
    exp_nonpositive<C>(a, diff);
    store(alpha + b * W, a);
    store(m + b * W, m_new);
    sum[b] = zero;
  }
  for (int64_t c = 0; c < cnt; ++c) {
    float* row = s + c * BQ;
    for (int b = 0; b < QV; ++b) {
      V x, p;
      load(x, row + b * W);
      x -= mu[b];
      exp_nonpositive<C>(p, x);
      store(row + b * W, p);
      sum[b] += p;
    }
  }
  for (int b = 0; b < QV; ++b) {
    V l_old, a;
    load(l_old, l + b * W);
    load(a, alpha + b * W);
    store(l + b * W, l_old * a + sum[b]);
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

// What every work item reads (fp32, contiguous).
struct Inputs {
  const float* q;   // [H, N, D]
  const float* k;   // [Hkv, N, D]
  const float* v;   // [Hkv, N, D]
  const float* pk;  // [Hkv, P, D] or null
  const float* pv;
  const int32_t* hz;          // [N]
  const int32_t* pos;         // [N]: each packed token's position in its sequence, or null (no window)
  int32_t window;             // > 0: query i sees a key only if pos[i] - (key position) < window; 0: no window
  const int32_t* scan_max;    // [ceil(N / kScanBlock)]: the largest horizon of each block of keys
  const uint8_t* bad;         // [Hkv][N]: the key's k or v row holds an inf or NaN
  const uint8_t* prefix_bad;  // [Hkv][P]
  const uint8_t* head_bad;    // [Hkv]: the kv head holds such a key (packed or prefix)
  int64_t N, P, D, Hkv, group, block_q, block_k;
  float scale;
  float softcap;       // > 0: scores are soft-capped to (-softcap, softcap); 0: not
  const float* sinks;  // [H, N] extra softmax logit per query head and query (zero value row), or null
  float* out;          // [H, N, D]
};

// Touches the rows that a work item reads first from memory (its queries, and the k and v rows of its own
// keys) and the output rows it writes, a few cache lines at a time, so that they arrive while the previous
// item computes.
struct RowPrefetch {
  std::vector<std::pair<const char*, const char*>> ranges;  // [begin, end) byte ranges
  size_t n_read = 0;                                        // ranges[n_read:] are written, not read
  size_t next = 0;                                          // the range being walked
  const char* at = nullptr;
  int64_t per_step = 0;  // cache lines per step

  void plan(const Inputs& in, int64_t item, int64_t steps) {
    ranges.clear();
    next = 0;
    const int64_t n_items = (in.N + in.block_q - 1) / in.block_q * in.Hkv;
    if (item < 0 || item >= n_items) return;
    const int64_t qb = item / in.Hkv, hk = item % in.Hkv, D = in.D;
    const int64_t q0 = qb * in.block_q, q1 = std::min(in.N, q0 + in.block_q);
    auto add = [&](const float* rows) {
      ranges.emplace_back(reinterpret_cast<const char*>(rows + q0 * D), reinterpret_cast<const char*>(rows + q1 * D));
    };
    for (int64_t g = 0; g < in.group; ++g) add(in.q + (hk * in.group + g) * in.N * D);
    add(in.k + hk * in.N * D);
    add(in.v + hk * in.N * D);
    n_read = ranges.size();
    for (int64_t g = 0; g < in.group; ++g) add(in.out + (hk * in.group + g) * in.N * D);
    at = ranges[0].first;
    const int64_t lines = (2 * in.group + 2) * (q1 - q0) * D * static_cast<int64_t>(sizeof(float)) / 64 + ranges.size();
    per_step = (lines + steps - 1) / std::max<int64_t>(steps, 1);
  }
  void step() {
    for (int64_t n = 0; n < per_step && next < ranges.size();) {
      if (at >= ranges[next].second) {
        if (++next < ranges.size()) at = ranges[next].first;
        continue;
      }
      if (next < n_read) {
        __builtin_prefetch(at, 0);
      } else {
        __builtin_prefetch(at, 1);
      }
      at += 64;
      ++n;
    }
  }
};

// Per-thread scratch, grown on demand.
struct Scratch {
  int64_t list_q0 = -1, list_q1 = -1;  // the query block whose key list src/kpos/khz hold
  std::vector<int32_t> src;            // the key: prefix row (< P) or packed row + P
  std::vector<int32_t> kpos, khz;      // its packed index (-1 for prefix keys) and horizon (kNoEnd for prefix)
  std::vector<int32_t> kw;             // its position (p for prefix key p, pos[j] for packed key j)
  std::vector<int32_t> qlo;            // [BQ]: each query's position minus the window (INT32_MIN: padding)
  std::vector<float> qt;               // [group][D][BQ]: the sub-block's queries, transposed and scaled
  std::vector<float> s;                // [block_k][BQ]: scores, then probabilities
  std::vector<float> acc;              // [group][BQ][D]: unnormalised outputs
  std::vector<float> m, l;             // [group][BQ]: running max and sum
  std::vector<float> kbuf;             // [block_k][D]: key rows of a segment that is not one run
  std::vector<float> zero;             // [D]: the row read in place of a non-finite key's k and v
  std::vector<const float*> vrow;      // [block_k]: value rows of the segment
  std::vector<uint8_t> poisoned;       // [BQ]: the query sees a non-finite key
  RowPrefetch prefetch;                // of the item this thread is expected to run next
};

// With a window, a key at position <= min over the block's queries of (position - window) is seen by none of
// them and is left out of the list (the front of the prefix, the early ancestors).
void build_key_list(const Inputs& in, Scratch& sc, int64_t q0, int64_t q1) {
  if (sc.list_q0 == q0 && sc.list_q1 == q1) return;  // the previous work item had the same query block
  sc.list_q0 = q0;
  sc.list_q1 = q1;
  sc.src.clear();
  sc.kpos.clear();
  sc.khz.clear();
  sc.kw.clear();
  int64_t cut = -1;  // keys at positions <= cut are seen by no query of the block
  if (in.window > 0) {
    cut = std::numeric_limits<int64_t>::max();
    for (int64_t i = q0; i < q1; ++i) cut = std::min<int64_t>(cut, in.pos[i] - in.window);
  }
  auto add = [&](int64_t src, int64_t kpos, int32_t end, int64_t at) {
    sc.src.push_back(static_cast<int32_t>(src));
    sc.kpos.push_back(static_cast<int32_t>(kpos));
    sc.khz.push_back(end);
    sc.kw.push_back(static_cast<int32_t>(at));
  };
  for (int64_t p = std::max<int64_t>(0, cut + 1); p < in.P; ++p) add(p, -1, kNoEnd, p);
  auto at = [&](int64_t j) { return in.window > 0 ? in.pos[j] : 0; };
  for (int64_t b0 = 0; b0 < q0; b0 += kScanBlock) {  // earlier keys whose subtree reaches the block
    if (in.scan_max[b0 / kScanBlock] <= q0) continue;
    for (int64_t j = b0; j < std::min(q0, b0 + kScanBlock); ++j) {
      if (in.hz[j] > q0 && at(j) > cut) add(in.P + j, j, in.hz[j], at(j));
    }
  }
  for (int64_t j = q0; j < q1; ++j) {  // the block's own keys (hz[j] > j >= q0)
    if (at(j) > cut) add(in.P + j, j, in.hz[j], at(j));
  }
}

// One work item: query block qb (block_q queries, in sub-blocks of BQ) of every query head of kv head hk;
// the rows of work item `next` (none if out of range) are prefetched meanwhile.
template <class C, int DC>
__attribute__((always_inline)) inline void run_block(const Inputs& in, Scratch& sc, int64_t qb, int64_t hk,
                                                     int64_t next) {
  constexpr int64_t W = C::W, BQ = C::QV * W;
  const int64_t N = in.N, P = in.P, D = DC > 0 ? DC : in.D, G = in.group, KS = in.block_k;
  const int64_t q0 = qb * in.block_q, q1 = std::min(N, q0 + in.block_q);
  build_key_list(in, sc, q0, q1);
  const int64_t L = static_cast<int64_t>(sc.src.size());
  sc.prefetch.plan(in, next, (q1 - q0 + BQ - 1) / BQ * ((L + KS - 1) / KS));
  sc.qt.resize(G * D * BQ);
  sc.s.resize(KS * BQ);
  sc.acc.resize(G * BQ * D);
  sc.m.resize(G * BQ);
  sc.l.resize(G * BQ);
  sc.kbuf.resize(KS * D);
  sc.zero.assign(D, 0.0f);
  sc.vrow.resize(KS);
  sc.poisoned.resize(BQ);
  sc.qlo.resize(BQ);
  const bool win = in.window > 0;
  const bool head_bad = in.head_bad[hk] != 0;
  const uint8_t* bad = in.bad + hk * N;
  const uint8_t* prefix_bad = in.prefix_bad + hk * P;
  const float* kh = in.k + hk * N * D;
  const float* vh = in.v + hk * N * D;
  const float* pkh = in.pk + hk * P * D;
  const float* pvh = in.pv + hk * P * D;
  auto is_bad = [&](int32_t src) { return head_bad && (src < P ? prefix_bad[src] : bad[src - P]) != 0; };

  for (int64_t r0 = q0; r0 < q1; r0 += BQ) {
    const int64_t r1 = std::min(q1, r0 + BQ), nr = r1 - r0;
    for (int64_t g = 0; g < G; ++g) {
      float* qt = sc.qt.data() + g * D * BQ;
      const float* qh = in.q + ((hk * G + g) * N + r0) * D;
      for (int64_t i = 0; i < BQ; ++i) {
        for (int64_t d = 0; d < D; ++d) qt[d * BQ + i] = i < nr ? qh[i * D + d] * in.scale : 0.0f;
      }
      std::fill_n(sc.m.data() + g * BQ, BQ, kNegInf);
      std::fill_n(sc.l.data() + g * BQ, BQ, 0.0f);
      if (in.sinks != nullptr) {  // a sink is one more key every query sees, with a zero value row
        const float* sink = in.sinks + (hk * G + g) * N + r0;
        std::copy_n(sink, nr, sc.m.data() + g * BQ);
        std::fill_n(sc.l.data() + g * BQ, nr, 1.0f);
      }
      std::fill_n(sc.acc.data() + g * BQ * D, BQ * D, 0.0f);
    }
    // With a window, query r0 + i sees a key only if qlo[i] < its position; qlo_min / qlo_max over the rows.
    int32_t qlo_min = std::numeric_limits<int32_t>::min(), qlo_max = qlo_min;
    std::fill_n(sc.qlo.data(), BQ, std::numeric_limits<int32_t>::min());
    if (win) {
      qlo_min = std::numeric_limits<int32_t>::max();
      for (int64_t i = 0; i < nr; ++i) {
        sc.qlo[i] = in.pos[r0 + i] - in.window;
        qlo_min = std::min(qlo_min, sc.qlo[i]);
        qlo_max = std::max(qlo_max, sc.qlo[i]);
      }
    }
    std::fill_n(sc.poisoned.data(), BQ, uint8_t{0});
    if (head_bad) {  // rare path: mark the queries that see a non-finite key (kpos <= q < khz, in the window)
      for (int64_t e = 0; e < L; ++e) {
        if (!is_bad(sc.src[e])) continue;
        const int64_t lo = std::max<int64_t>(sc.kpos[e], r0), hi = std::min<int64_t>(sc.khz[e], r1);
        for (int64_t i = lo; i < hi; ++i) sc.poisoned[i - r0] |= static_cast<uint8_t>(sc.qlo[i - r0] < sc.kw[e]);
      }
    }
    for (int64_t e1 = 0; e1 < L; e1 += KS) {
      if (sc.kpos[e1] >= r1) break;  // this and every later segment start past the sub-block's last query
      // The segment's leading keys that no query of the sub-block sees (below its window) are skipped.
      int64_t e0 = e1;
      const int64_t e_end = std::min(L, e1 + KS);
      if (win) {
        while (e0 < e_end && sc.kw[e0] <= qlo_min) ++e0;
        if (e0 == e_end) continue;
      }
      const int64_t cnt = e_end - e0;
      sc.prefetch.step();
      const int32_t* src = sc.src.data() + e0;
      const int32_t* kpos = sc.kpos.data() + e0;
      const int32_t* khz = sc.khz.data() + e0;
      const int32_t* kw = sc.kw.data() + e0;
      int32_t hz_min = kNoEnd;
      for (int64_t c = 0; c < cnt; ++c) hz_min = std::min(hz_min, khz[c]);
      const bool full = kpos[cnt - 1] <= r0 && hz_min >= r1;
      int32_t kw_min = std::numeric_limits<int32_t>::max();
      for (int64_t c = 0; win && c < cnt; ++c) kw_min = std::min(kw_min, kw[c]);
      const bool in_window = !win || kw_min > qlo_max;  // every key within every query's window
      bool any_bad = false;
      for (int64_t c = 0; head_bad && c < cnt; ++c) any_bad = any_bad || is_bad(src[c]);
      const bool run = !any_bad && src[cnt - 1] - src[0] == cnt - 1 && (src[0] >= P || src[cnt - 1] < P);
      auto krow = [&](int32_t j) { return j < P ? pkh + j * D : kh + (j - P) * D; };
      const float* keys = sc.kbuf.data();
      if (run) {
        keys = krow(src[0]);
      } else {
        for (int64_t c = 0; c < cnt; ++c) {
          std::memcpy(sc.kbuf.data() + c * D, is_bad(src[c]) ? sc.zero.data() : krow(src[c]), D * sizeof(float));
        }
      }
      for (int64_t c = 0; c < cnt; ++c) {
        sc.vrow[c] = is_bad(src[c]) ? sc.zero.data() : (src[c] < P ? pvh + src[c] * D : vh + (src[c] - P) * D);
      }
      for (int64_t g = 0; g < G; ++g) {
        const float* qt = sc.qt.data() + g * D * BQ;
        float* s = sc.s.data();
        RowMax<C> mt;
        for (int b = 0; b < C::QV; ++b) mt.v[b] = typename C::V{} + kNegInf;
        const SegKeys sk{keys, kpos, khz, kw, sc.qlo.data()};
        if (!in_window) {
          score_segment<C, kWindow>(qt, D, sk, r0, cnt, s, mt);
        } else if (full) {
          score_segment<C, kNoMask>(qt, D, sk, r0, cnt, s, mt);
        } else {
          score_segment<C, kHorizon>(qt, D, sk, r0, cnt, s, mt);
        }
        if (in.softcap > 0.0f) softcap_segment<C>(s, cnt, mt, in.softcap);
        float alpha[BQ];
        softmax_step<C>(s, cnt, mt, sc.m.data() + g * BQ, sc.l.data() + g * BQ, alpha);
        value_update<C>(s, sc.vrow.data(), cnt, kpos, r0, sc.acc.data() + g * BQ * D, D, alpha, nr);
      }
    }
    constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
    for (int64_t g = 0; g < G; ++g) {
      const float* acc = sc.acc.data() + g * BQ * D;
      const float* l = sc.l.data() + g * BQ;
      float* out = in.out + ((hk * G + g) * N + r0) * D;
      for (int64_t i = 0; i < nr; ++i) {
        const float inv = sc.poisoned[i] ? kNaN : 1.0f / l[i];  // l > 0: every query sees at least itself
        for (int64_t d = 0; d < D; ++d) out[i * D + d] = acc[i * D + d] * inv;
      }
    }
  }
}

using BlockFn = void (*)(const Inputs&, Scratch&, int64_t, int64_t, int64_t);

// Each build comes with the head dim as a constant for the common sizes (the score and p v micro-tiles then
// address their rows by constant offsets) and as a run-time value otherwise (DC = 0).
#if defined(__x86_64__)
template <int DC>
__attribute__((target("arch=x86-64-v4"))) void run_block_avx512(const Inputs& in, Scratch& sc, int64_t qb, int64_t hk,
                                                                int64_t next) {
  run_block<Avx512, DC>(in, sc, qb, hk, next);
}
template <int DC>
__attribute__((target("arch=x86-64-v3"))) void run_block_avx2(const Inputs& in, Scratch& sc, int64_t qb, int64_t hk,
                                                              int64_t next) {
  run_block<Avx2, DC>(in, sc, qb, hk, next);
}
#endif
template <int DC>
void run_block_baseline(const Inputs& in, Scratch& sc, int64_t qb, int64_t hk, int64_t next) {
  run_block<Baseline, DC>(in, sc, qb, hk, next);
}

template <template <int> class Fn>
BlockFn for_head_dim(int64_t D) {
  if (D == 64) return Fn<64>::fn;
  if (D == 128) return Fn<128>::fn;
  return Fn<0>::fn;
}
#if defined(__x86_64__)
template <int DC>
struct Avx512Fn {
  static constexpr BlockFn fn = run_block_avx512<DC>;
};
template <int DC>
struct Avx2Fn {
  static constexpr BlockFn fn = run_block_avx2<DC>;
};
#endif
template <int DC>
struct BaselineFn {
  static constexpr BlockFn fn = run_block_baseline<DC>;
};

// The build of run_block for `isa` ("auto": the widest this CPU runs; "avx512", "avx2", "baseline": that one,
// refused when this CPU cannot run it, so that tests reach every build).
BlockFn pick_block_fn(const std::string& isa, int64_t D) {
  TORCH_CHECK_VALUE(isa == "auto" || isa == "avx512" || isa == "avx2" || isa == "baseline",
                    "tree_attention: isa must be \"auto\", \"avx512\", \"avx2\" or \"baseline\", got \"", isa, "\"");
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("x86-64-v4"), avx2 = __builtin_cpu_supports("x86-64-v3");
#else
  const bool avx512 = false, avx2 = false;
#endif
  TORCH_CHECK_VALUE(isa != "avx512" || avx512, "tree_attention: isa=\"avx512\" is not supported by this CPU");
  TORCH_CHECK_VALUE(isa != "avx2" || avx2, "tree_attention: isa=\"avx2\" is not supported by this CPU");
#if defined(__x86_64__)
  if (avx512 && (isa == "auto" || isa == "avx512")) return for_head_dim<Avx512Fn>(D);
  if (avx2 && (isa == "auto" || isa == "avx2")) return for_head_dim<Avx2Fn>(D);
#endif
  return for_head_dim<BaselineFn>(D);
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
                          const std::optional<at::Tensor>& prefix_v_in, double softcap,
                          const std::optional<at::Tensor>& sinks_in, const std::optional<at::Tensor>& positions,
                          int64_t window, int64_t block_q, int64_t block_k, const std::string& isa) {
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
  TORCH_CHECK_VALUE(std::isfinite(softcap) && softcap >= 0.0,
                    "tree_attention: softcap must be a finite number > 0 (or 0 for none), got ", softcap);
  TORCH_CHECK_VALUE(block_q >= 1 && block_k >= 1, "tree_attention: block sizes must be >= 1");
  at::Tensor sinks;
  if (sinks_in.has_value()) {
    TORCH_CHECK_VALUE(sinks_in->device().is_cpu(), "tree_attention: sinks must be a CPU tensor");
    TORCH_CHECK_TYPE(at::isFloatingType(sinks_in->scalar_type()), "tree_attention: sinks must be a float tensor, got ",
                     sinks_in->scalar_type());
    const bool per_head = sinks_in->dim() == 1 && sinks_in->size(0) == H;
    TORCH_CHECK_VALUE(per_head || (sinks_in->dim() == 2 && sinks_in->size(0) == H && sinks_in->size(1) == N),
                      "tree_attention: sinks must have shape [", H, "] (one logit per query head) or [", H, ", ", N,
                      "] (per head and query), got ", sinks_in->sizes());
    sinks = sinks_in->to(at::kFloat).reshape({H, -1}).expand({H, N}).contiguous();
    const float* sp = sinks.data_ptr<float>();
    for (int64_t t = 0; t < H * N; ++t) {
      TORCH_CHECK_VALUE(!std::isnan(sp[t]) && sp[t] != std::numeric_limits<float>::infinity(),
                        "tree_attention: sinks must be finite or -inf (no sink), got ", sp[t]);
    }
  }
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
  TORCH_CHECK_VALUE(window >= 0, "tree_attention: window must be >= 1 (or 0 for none), got ", window);
  TORCH_CHECK_VALUE(window == 0 || positions.has_value(),
                    "tree_attention: a window needs positions (each packed token's position in its sequence)");
  TORCH_CHECK_VALUE(window > 0 || !positions.has_value(),
                    "tree_attention: positions are read only with a window; pass window too, or neither");
  const int32_t* pos = nullptr;
  if (positions.has_value()) {
    TORCH_CHECK_VALUE(positions->device().is_cpu() && positions->scalar_type() == at::kInt,
                      "tree_attention: positions must be a CPU int32 tensor, got ", positions->scalar_type(), " on ",
                      positions->device());
    TORCH_CHECK_VALUE(positions->dim() == 1 && positions->size(0) == N, "tree_attention: positions must have shape [",
                      N, "], got ", positions->sizes());
    TORCH_CHECK_VALUE(positions->is_contiguous(), "tree_attention: positions must be contiguous");
    pos = positions->data_ptr<int32_t>();
    for (int64_t t = 0; t < N; ++t) {
      TORCH_CHECK_VALUE(pos[t] >= 0, "tree_attention: positions must be >= 0, got positions[", t, "] = ", pos[t]);
    }
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
    TORCH_CHECK_VALUE(P < std::numeric_limits<int32_t>::max() - N,
                      "tree_attention: too many prefix and packed tokens for int32 key indices");
  }

  const BlockFn run_block_fn = pick_block_fn(isa, D);

  // A window wider than every (query position - key position) hides nothing: run without one.
  int32_t eff_window = 0;
  if (window > 0 && N > 0) {
    const int64_t pos_max = *std::max_element(pos, pos + N);
    const int64_t key_min = P > 0 ? 0 : *std::min_element(pos, pos + N);
    if (window <= pos_max - key_min) eff_window = static_cast<int32_t>(window);
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

  // Keys whose k or v row holds an inf or NaN (read as zeros; their viewers are set to NaN).
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const float* pkp = P > 0 ? pk.data_ptr<float>() : nullptr;
  const float* pvp = P > 0 ? pv.data_ptr<float>() : nullptr;
  std::vector<uint8_t> bad(Hkv * N), prefix_bad(Hkv * P), head_bad(Hkv, 0);
  at::parallel_for(0, Hkv * N, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) bad[t] = !(all_finite(kp + t * D, D) && all_finite(vp + t * D, D));
  });
  for (int64_t t = 0; t < Hkv * P; ++t) prefix_bad[t] = !(all_finite(pkp + t * D, D) && all_finite(pvp + t * D, D));
  for (int64_t hk = 0; hk < Hkv; ++hk) {
    for (int64_t t = 0; t < N; ++t) head_bad[hk] |= bad[hk * N + t];
    for (int64_t t = 0; t < P; ++t) head_bad[hk] |= prefix_bad[hk * P + t];
  }
  std::vector<int32_t> scan_max((N + kScanBlock - 1) / kScanBlock);
  for (size_t b = 0; b < scan_max.size(); ++b) {
    const int64_t k0 = static_cast<int64_t>(b) * kScanBlock;
    scan_max[b] = *std::max_element(hz + k0, hz + std::min(N, k0 + kScanBlock));
  }

  Inputs in;
  in.q = q.data_ptr<float>();
  in.k = kp;
  in.v = vp;
  in.pk = pkp;
  in.pv = pvp;
  in.hz = hz;
  in.pos = eff_window > 0 ? pos : nullptr;
  in.window = eff_window;
  in.scan_max = scan_max.data();
  in.bad = bad.data();
  in.prefix_bad = prefix_bad.data();
  in.head_bad = head_bad.data();
  in.N = N;
  in.P = P;
  in.D = D;
  in.Hkv = Hkv;
  in.group = H / Hkv;
  in.block_q = std::min(block_q, N);
  in.block_k = std::min(block_k, P + N);  // no segment is longer than the longest key list
  in.scale = static_cast<float>(scale_d);
  in.softcap = static_cast<float>(softcap);
  in.sinks = sinks.defined() ? sinks.data_ptr<float>() : nullptr;
  in.out = out.data_ptr<float>();

  const int64_t n_items = (N + in.block_q - 1) / in.block_q * Hkv;  // (query block, kv head), kv head fastest
  const int n_threads = std::max(1, at::get_num_threads());
#pragma omp parallel num_threads(n_threads)
  {
    Scratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < n_items; ++item) {
      run_block_fn(in, scratch, item / Hkv, item % Hkv, item + n_threads);  // items go round the threads
    }
  }
  return dtype == at::kFloat ? out : out.to(dtype);
}

}  // namespace scar
