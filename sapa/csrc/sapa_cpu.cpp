// Fused CPU kernels of the SAPA operator (forward, and backward for query, key and value),
// and of CARAFE-style reassembly with given kernels (sapa.upsamplers.reassemble: forward, and
// backward for the feature and the kernels; see "reassembly" below: the same building blocks).
//
// Built on first use by sapa/backends/cpp.py with torch.utils.cpp_extension.load.
//
// Layout. Output pixels are grouped by their window centre: the output rows i with
// centre a = floor(i*H/H') form "group" a (n_u of them, phase u), the output columns j with
// centre b = floor(j*W/W') have phase v = j - first(b). Within a group, a (u, v) phase is a
// low-resolution map of width W whose K x K windows are plain shifts of the padded
// low-resolution rows a-R .. a+R, so every inner loop runs along the low-res column b over
// contiguous memory and vectorises (GCC vector extensions, the target's widest vectors).
//
// Phase buffers have rows of Wb = Wr + 2R entries (Wr = W rounded up to the vector width);
// low-res column b lives at index R + b and everything outside the map is zero. The K
// zero-padded key and value rows around a centre row are kept per thread in a ring of K
// rows (moving to the next centre row copies one row): no padded copy of the maps.
//
// Forward, per group (parallel over B x H groups): gather the query into phases, logits
// (reduction over d), normalisation, assembly (sum over the K*K window), scatter to NCHW.
// Backward stage 1, per group: the same logits and weights, the gradient of the weights
// (reduction over C with grad_out gathered into phases), the normalisation's backward, the
// query gradient; the weights, the logit gradients and the query in phases are kept (K*K or
// d numbers per output pixel). Stage 2, per low-res row y of the key/value gradients
// (parallel over B x H rows): each gradient entry is a sum over the K x K windows that
// contain it, read from stage 1's buffers and from grad_out re-gathered into a ring of K
// groups, so every thread writes only its own rows: no atomics, and the summation order does
// not depend on the number of threads (bitwise repeatable).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if !defined(__GNUC__)
#error "sapa_cpu.cpp needs GCC or Clang vector extensions"
#endif

namespace {

// ---------------------------------------------------------------------------------------
// SIMD vectors
// ---------------------------------------------------------------------------------------
// the widest vectors the target has (GCC lowers wider vector types badly: through the stack)
#if defined(__AVX512F__)
#define SAPA_VBYTES 64
#elif defined(__AVX__)
#define SAPA_VBYTES 32
#else
#define SAPA_VBYTES 16
#endif
template <typename T> struct VT;
template <> struct VT<float> {
  typedef float V __attribute__((vector_size(SAPA_VBYTES)));
  typedef int32_t I __attribute__((vector_size(SAPA_VBYTES)));
  static constexpr int L = SAPA_VBYTES / 4;
};
template <> struct VT<double> {
  typedef double V __attribute__((vector_size(SAPA_VBYTES)));
  typedef int64_t I __attribute__((vector_size(SAPA_VBYTES)));
  static constexpr int L = SAPA_VBYTES / 8;
};

template <typename T>
inline typename VT<T>::V vload(const T* p) {
  typename VT<T>::V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void vstore(T* p, typename VT<T>::V v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
inline typename VT<T>::V vsplat(T x) {
  typename VT<T>::V v = {};
  return v + x;
}
template <typename T>
inline typename VT<T>::V vmax(typename VT<T>::V a, typename VT<T>::V b) {
  return a > b ? a : b;
}

// exp for x <= 0 (the softmax's shifted logits): 2^n * poly(r), |r| <= ln2/2
inline VT<float>::V vexp(VT<float>::V x) {
  typedef VT<float>::V V;
  typedef VT<float>::I I;
  const V lo = vsplat<float>(-87.0f), hi = vsplat<float>(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V magic = vsplat<float>(12582912.0f);  // 1.5 * 2^23: round to nearest
  V n = (x * 1.44269504088896341f + magic) - magic;
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = vsplat<float>(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  I e = (__builtin_convertvector(n, I) + 127) << 23;
  V s;
  std::memcpy(&s, &e, sizeof(s));
  return p * s;
}

inline VT<double>::V vexp(VT<double>::V x) {
  typedef VT<double>::V V;
  typedef VT<double>::I I;
  const V lo = vsplat<double>(-708.0), hi = vsplat<double>(709.0);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V magic = vsplat<double>(6755399441055744.0);  // 1.5 * 2^52
  V n = (x * 1.4426950408889634074 + magic) - magic;
  V r = x - n * 6.93145751953125e-1;
  r = r - n * 1.42860682030941723212e-6;
  static const double c[] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                             1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,
                             1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,        0.5,
                             1.0,                1.0};
  V p = vsplat<double>(c[0]);
  for (int t = 1; t < 14; ++t) p = p * r + c[t];
  I e = (__builtin_convertvector(n, I) + 1023) << 52;
  V s;
  std::memcpy(&s, &e, sizeof(s));
  return p * s;
}

enum Norm { SOFTMAX = 0, RELU = 1, SIGMOID = 2, SOFTPLUS = 3, NONE = 4 };
constexpr double kNormEps = 1e-6;  // sapa.NORM_EPS

// ---------------------------------------------------------------------------------------
// geometry shared by forward and backward
// ---------------------------------------------------------------------------------------
struct Geo {
  int64_t B, d, C, H, W, Hq, Wq, K, R, KK, Wr, Wb, mr, mc, Pm;
  std::vector<int64_t> firstr;  // H + 1 entries: first output row of each centre row
  std::vector<int64_t> idxcol;  // Wq entries: phase-buffer index (v * Wb + R + b) of column j
  bool ignore;
  bool exact_w;  // W' = mc * W: column phases are plain strides
  int norm;

  Geo(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t K_, bool ignore_, int norm_, int L)
      : K(K_), ignore(ignore_), norm(norm_) {
    B = q.size(0);
    d = q.size(1);
    Hq = q.size(2);
    Wq = q.size(3);
    C = v.size(1);
    H = v.size(2);
    W = v.size(3);
    R = K / 2;
    KK = K * K;
    Wr = (W + L - 1) / L * L;
    Wb = Wr + 2 * R;
    firstr.resize(H + 1);
    mr = 0;
    for (int64_t a = 0; a <= H; ++a) firstr[a] = (a * Hq + H - 1) / H;
    for (int64_t a = 0; a < H; ++a) mr = std::max(mr, firstr[a + 1] - firstr[a]);
    std::vector<int64_t> firstc(W + 1);
    for (int64_t b = 0; b <= W; ++b) firstc[b] = (b * Wq + W - 1) / W;
    mc = 0;
    for (int64_t b = 0; b < W; ++b) mc = std::max(mc, firstc[b + 1] - firstc[b]);
    idxcol.resize(Wq);
    for (int64_t j = 0; j < Wq; ++j) {
      int64_t b = (j * W) / Wq;
      idxcol[j] = (j - firstc[b]) * Wb + R + b;
    }
    Pm = mr * mc;
    exact_w = Wq == mc * W;
  }
  int64_t nu(int64_t a) const { return firstr[a + 1] - firstr[a]; }
};

// K zero-padded low-res rows of a (B, c, H, W) map: row dy of channel c at
// base + c * cstride + off[dy] (Wb entries, column b + dx of the padded row is column
// b + dx - R of the map)
template <typename T>
struct Rows {
  const T* base;
  int64_t cstride;
  const int64_t* off;
};

// the K padded rows around centre row a, kept in a ring of K slots: moving to a + 1 copies
// one new row (no padded copy of the whole map, no page faults)
template <typename T>
struct RowRing {
  const T* src;
  int64_t c_n;
  const Geo& g;
  std::vector<T> buf;
  std::vector<int64_t> off;
  int64_t n = -1, a = -2;

  RowRing(const T* src_, int64_t c_n_, const Geo& g_)
      : src(src_), c_n(c_n_), g(g_), buf(c_n_ * g_.K * g_.Wb, T(0)), off(g_.K) {}

  void load(int64_t n_, int64_t pr) {  // padded row pr of batch n_ into slot pr % K
    const int64_t slot = pr % g.K, y = pr - g.R;
    for (int64_t c = 0; c < c_n; ++c) {
      T* dst = buf.data() + (c * g.K + slot) * g.Wb;
      if (y < 0 || y >= g.H) {
        std::fill(dst, dst + g.Wb, T(0));
      } else {
        std::fill(dst, dst + g.R, T(0));
        std::memcpy(dst + g.R, src + ((n_ * c_n + c) * g.H + y) * g.W, g.W * sizeof(T));
        std::fill(dst + g.R + g.W, dst + g.Wb, T(0));
      }
    }
  }

  Rows<T> at(int64_t n_, int64_t a_) {
    if (n_ == n && a_ == a + 1) {
      load(n_, a_ + 2 * g.R);
    } else if (!(n_ == n && a_ == a)) {
      for (int64_t dy = 0; dy < g.K; ++dy) load(n_, a_ + dy);
    }
    n = n_;
    a = a_;
    for (int64_t dy = 0; dy < g.K; ++dy) off[dy] = ((a_ + dy) % g.K) * g.Wb;
    return Rows<T>{buf.data(), g.K * g.Wb, off.data()};
  }
};

// one output row <-> its mc column phases (rows of Wb entries, column b at R + b)
template <typename T, int MC>
inline void split_row(const T* row, T* ph, int64_t W, int64_t Wb) {
  for (int64_t b = 0; b < W; ++b)
    for (int v = 0; v < MC; ++v) ph[v * Wb + b] = row[b * MC + v];
}
template <typename T, int MC>
inline void join_row(const T* ph, T* row, int64_t W, int64_t Wb) {
  for (int64_t b = 0; b < W; ++b)
    for (int v = 0; v < MC; ++v) row[b * MC + v] = ph[v * Wb + b];
}
template <typename T>
inline void split_row(const T* row, T* ph, const Geo& g) {  // ph: first phase row of output row u
  if (g.exact_w && g.mc == 1) return split_row<T, 1>(row, ph + g.R, g.W, g.Wb);
  if (g.exact_w && g.mc == 2) return split_row<T, 2>(row, ph + g.R, g.W, g.Wb);
  if (g.exact_w && g.mc == 4) return split_row<T, 4>(row, ph + g.R, g.W, g.Wb);
  const int64_t* idx = g.idxcol.data();
  for (int64_t j = 0; j < g.Wq; ++j) ph[idx[j]] = row[j];
}
template <typename T>
inline void join_row(const T* ph, T* row, const Geo& g) {
  if (g.exact_w && g.mc == 1) return join_row<T, 1>(ph + g.R, row, g.W, g.Wb);
  if (g.exact_w && g.mc == 2) return join_row<T, 2>(ph + g.R, row, g.W, g.Wb);
  if (g.exact_w && g.mc == 4) return join_row<T, 4>(ph + g.R, row, g.W, g.Wb);
  const int64_t* idx = g.idxcol.data();
  for (int64_t j = 0; j < g.Wq; ++j) row[j] = ph[idx[j]];
}

// gather rows firstr[a] .. of an NCHW (B, c, H', W') map into phases: dst[c][P][Wb]
// (only the valid entries are written; the rest keeps its zeros)
template <typename T>
void gather_phases(const T* src, T* dst, int64_t n, int64_t a, int64_t c_n, const Geo& g) {
  const int64_t nu = g.nu(a), i0 = g.firstr[a];
  for (int64_t c = 0; c < c_n; ++c)
    for (int64_t u = 0; u < nu; ++u)
      split_row(src + ((n * c_n + c) * g.Hq + i0 + u) * g.Wq, dst + (c * g.Pm + u * g.mc) * g.Wb, g);
}

// S[P][p][R + b] = sum_c X[c][P][R + b] * Y[c][a + dy][b + dx]   (P < nP, b < Wr)
// X: phases (c_n, Pm, Wb); Y: the padded rows around a. Logits (X = query, Y = key) and
// weight gradients (X = grad_out, Y = value).
template <typename T, int NB>
inline void window_dot_block(const T* X, const Rows<T>& Y, T* S, int64_t P0, int64_t c_n, const Geo& g) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  const int64_t rows = Y.cstride, pstride = g.Pm * g.Wb;
  for (int64_t bv = 0; bv < g.Wr; bv += L) {
    for (int64_t dy = 0; dy < g.K; ++dy) {
      for (int64_t dx = 0; dx < g.K; ++dx) {
        V acc[NB];
        for (int t = 0; t < NB; ++t) acc[t] = vsplat<T>(0);
        const T* y = Y.base + Y.off[dy] + bv + dx;
        const T* x = X + P0 * g.Wb + g.R + bv;
        for (int64_t c = 0; c < c_n; ++c) {
          V yv = vload(y + c * rows);
          const T* xc = x + c * pstride;
          for (int t = 0; t < NB; ++t) acc[t] += vload(xc + t * g.Wb) * yv;
        }
        const int64_t p = dy * g.K + dx;
        for (int t = 0; t < NB; ++t) vstore(S + ((P0 + t) * g.KK + p) * g.Wb + g.R + bv, acc[t]);
      }
    }
  }
}

// the same with the K offsets dx of a window row held in registers (K known at compile time)
template <typename T, int NB, int KX>
inline void window_dot_block_k(const T* X, const Rows<T>& Y, T* S, int64_t P0, int64_t c_n, const Geo& g) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  const int64_t rows = Y.cstride, pstride = g.Pm * g.Wb;
  for (int64_t bv = 0; bv < g.Wr; bv += L) {
    for (int64_t dy = 0; dy < KX; ++dy) {
      V acc[NB][KX];
      for (int t = 0; t < NB; ++t)
        for (int dx = 0; dx < KX; ++dx) acc[t][dx] = vsplat<T>(0);
      const T* y = Y.base + Y.off[dy] + bv;
      const T* x = X + P0 * g.Wb + g.R + bv;
      for (int64_t c = 0; c < c_n; ++c) {
        V xv[NB];
        for (int t = 0; t < NB; ++t) xv[t] = vload(x + c * pstride + t * g.Wb);
        const T* yc = y + c * rows;
        for (int dx = 0; dx < KX; ++dx) {
          V yv = vload(yc + dx);
          for (int t = 0; t < NB; ++t) acc[t][dx] += xv[t] * yv;
        }
      }
      for (int t = 0; t < NB; ++t)
        for (int dx = 0; dx < KX; ++dx) vstore(S + ((P0 + t) * KX * KX + dy * KX + dx) * g.Wb + g.R + bv, acc[t][dx]);
    }
  }
}

template <typename T>
void window_dot(const T* X, const Rows<T>& Y, T* S, int64_t nP, int64_t c_n, const Geo& g) {
  int64_t P = 0;
  if (g.K == 5) {
    for (; P + 2 <= nP; P += 2) window_dot_block_k<T, 2, 5>(X, Y, S, P, c_n, g);
    if (P < nP) window_dot_block_k<T, 1, 5>(X, Y, S, P, c_n, g);
    return;
  }
  if (g.K == 3) {
    for (; P + 3 <= nP; P += 3) window_dot_block_k<T, 3, 3>(X, Y, S, P, c_n, g);
    for (; P < nP; ++P) window_dot_block_k<T, 1, 3>(X, Y, S, P, c_n, g);
    return;
  }
  for (; P + 4 <= nP; P += 4) window_dot_block<T, 4>(X, Y, S, P, c_n, g);
  switch (nP - P) {
    case 3: window_dot_block<T, 3>(X, Y, S, P, c_n, g); break;
    case 2: window_dot_block<T, 2>(X, Y, S, P, c_n, g); break;
    case 1: window_dot_block<T, 1>(X, Y, S, P, c_n, g); break;
    default: break;
  }
}

// O[c][P][R + b] = sum_p Wt[P][p][R + b] * Y[c][a + dy][b + dx] for CB channels at a time,
// then the phases are scattered to the NCHW rows of the output. Assembly (Wt = weights,
// Y = value) and the query gradient (Wt = logit gradients, Y = key).
template <typename T, int NB, int CB>
inline void window_sum_block(const T* Wt, const T* Yc, const Rows<T>& Y, T* O, int64_t P0, const Geo& g) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  const int64_t ystride = Y.cstride, ostride = g.Pm * g.Wb;
  for (int64_t bv = 0; bv < g.Wr; bv += L) {
    V acc[CB][NB];
    for (int cb = 0; cb < CB; ++cb)
      for (int t = 0; t < NB; ++t) acc[cb][t] = vsplat<T>(0);
    for (int64_t dy = 0; dy < g.K; ++dy) {
      const T* y = Yc + Y.off[dy] + bv;
      const T* w = Wt + (P0 * g.KK + dy * g.K) * g.Wb + g.R + bv;
      for (int64_t dx = 0; dx < g.K; ++dx) {
        V wv[NB];
        for (int t = 0; t < NB; ++t) wv[t] = vload(w + (t * g.KK + dx) * g.Wb);
        for (int cb = 0; cb < CB; ++cb) {
          V yv = vload(y + cb * ystride + dx);
          for (int t = 0; t < NB; ++t) acc[cb][t] += wv[t] * yv;
        }
      }
    }
    for (int cb = 0; cb < CB; ++cb)
      for (int t = 0; t < NB; ++t) vstore(O + cb * ostride + (P0 + t) * g.Wb + g.R + bv, acc[cb][t]);
  }
}

template <typename T, int CB>
inline void window_sum_phases(const T* Wt, const T* Yc, const Rows<T>& Y, T* O, int64_t nP, const Geo& g) {
  int64_t P = 0;
  for (; P + 4 <= nP; P += 4) window_sum_block<T, 4, CB>(Wt, Yc, Y, O, P, g);
  switch (nP - P) {
    case 3: window_sum_block<T, 3, CB>(Wt, Yc, Y, O, P, g); break;
    case 2: window_sum_block<T, 2, CB>(Wt, Yc, Y, O, P, g); break;
    case 1: window_sum_block<T, 1, CB>(Wt, Yc, Y, O, P, g); break;
    default: break;
  }
}

// O: scratch of 2 * Pm * Wb entries
template <typename T>
void window_sum_scatter(const T* Wt, const Rows<T>& Y, T* out, int64_t n, int64_t a, int64_t c_n, T* O, const Geo& g) {
  const int64_t nu = g.nu(a), nP = nu * g.mc, i0 = g.firstr[a];
  for (int64_t c = 0; c < c_n; c += 2) {
    const T* Yc = Y.base + c * Y.cstride;
    const int cb_n = c + 2 <= c_n ? 2 : 1;
    if (cb_n == 2)
      window_sum_phases<T, 2>(Wt, Yc, Y, O, nP, g);
    else
      window_sum_phases<T, 1>(Wt, Yc, Y, O, nP, g);
    for (int cb = 0; cb < cb_n; ++cb)
      for (int64_t u = 0; u < nu; ++u)
        join_row(O + (cb * g.Pm + u * g.mc) * g.Wb, out + ((n * c_n + c + cb) * g.Hq + i0 + u) * g.Wq, g);
  }
}

// column masks for padding="ignore": colmask[dx][R + b] = 1 if 0 <= b + dx - R < W
template <typename T>
std::vector<T> column_mask(const Geo& g) {
  std::vector<T> m(g.K * g.Wb, T(0));
  for (int64_t dx = 0; dx < g.K; ++dx)
    for (int64_t b = 0; b < g.Wr; ++b) {
      int64_t x = b + dx - g.R;
      m[dx * g.Wb + g.R + b] = (x >= 0 && x < g.W) ? T(1) : T(0);
    }
  return m;
}

inline bool row_ok(const Geo& g, int64_t a, int64_t dy) {
  int64_t y = a + dy - g.R;
  return !g.ignore || (y >= 0 && y < g.H);
}

template <typename T>
inline T h_fn(T s, int norm) {
  switch (norm) {
    case RELU: return s > 0 ? s : T(0);
    case SIGMOID: return T(1) / (T(1) + std::exp(-s));
    case SOFTPLUS: return s > T(20) ? s : std::log1p(std::exp(s));
    default: return s;
  }
}

template <typename T>
inline T h_prime(T s, int norm) {
  switch (norm) {
    case RELU: return s > 0 ? T(1) : T(0);
    case SIGMOID: { T sg = T(1) / (T(1) + std::exp(-s)); return sg * (T(1) - sg); }
    case SOFTPLUS: return T(1) / (T(1) + std::exp(-s));
    default: return T(1);
  }
}

// weights Wt[P][p][R + b] from logits S (same layout), P < nP
template <typename T>
void normalize(const T* S, T* Wt, int64_t nP, int64_t a, const T* colmask, const Geo& g) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  const int64_t K = g.K, KK = g.KK, Wb = g.Wb, R = g.R;
  for (int64_t P = 0; P < nP; ++P) {
    const T* s = S + P * KK * Wb + R;
    T* w = Wt + P * KK * Wb + R;
    if (g.norm == SOFTMAX) {
      for (int64_t bv = 0; bv < g.Wr; bv += L) {
        const V zero = vsplat<T>(0);
        V m = vsplat<T>(-std::numeric_limits<T>::max());
        for (int64_t p = 0; p < KK; ++p) {
          if (!row_ok(g, a, p / K)) continue;
          V x = vload(s + p * Wb + bv);
          if (g.ignore) {
            V mk = vload(colmask + (p % K) * Wb + R + bv);
            x = mk != zero ? x : m;
          }
          m = vmax<T>(m, x);
        }
        V sum = zero;
        for (int64_t p = 0; p < KK; ++p) {
          V e = zero;
          if (row_ok(g, a, p / K)) {
            e = vexp(vload(s + p * Wb + bv) - m);
            if (g.ignore) {
              V mk = vload(colmask + (p % K) * Wb + R + bv);
              e = mk != zero ? e : zero;
            }
          }
          sum += e;
          vstore(w + p * Wb + bv, e);
        }
        // a window always holds its centre; only lanes past the map (b >= W) can be empty
        V inv = sum > zero ? vsplat<T>(1) / sum : zero;
        for (int64_t p = 0; p < KK; ++p) vstore(w + p * Wb + bv, vload(w + p * Wb + bv) * inv);
      }
    } else {
      for (int64_t b = 0; b < g.Wr; ++b) {
        T sum = 0;
        for (int64_t p = 0; p < KK; ++p) {
          bool ok = row_ok(g, a, p / K) && (!g.ignore || colmask[(p % K) * Wb + R + b] != T(0));
          T h = ok ? h_fn(s[p * Wb + b], g.norm) : T(0);
          w[p * Wb + b] = h;
          sum += h;
        }
        if (g.norm != NONE) {
          T inv = T(1) / (sum + T(kNormEps));
          for (int64_t p = 0; p < KK; ++p) w[p * Wb + b] *= inv;
        }
      }
    }
  }
}

// logit gradients Gl from logits S, weights Wt and weight gradients Gw (all [P][p][R + b])
template <typename T>
void normalize_backward(const T* S, const T* Wt, const T* Gw, T* Gl, int64_t nP, int64_t a, const T* colmask,
                        const Geo& g) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  const int64_t K = g.K, KK = g.KK, Wb = g.Wb, R = g.R;
  for (int64_t P = 0; P < nP; ++P) {
    const int64_t off = P * KK * Wb + R;
    const T *s = S + off, *w = Wt + off, *gw = Gw + off;
    T* gl = Gl + off;
    if (g.norm == SOFTMAX) {
      for (int64_t bv = 0; bv < g.Wr; bv += L) {
        V dot = vsplat<T>(0);
        for (int64_t p = 0; p < KK; ++p) dot += vload(w + p * Wb + bv) * vload(gw + p * Wb + bv);
        for (int64_t p = 0; p < KK; ++p)
          vstore(gl + p * Wb + bv, vload(w + p * Wb + bv) * (vload(gw + p * Wb + bv) - dot));
      }
    } else {
      for (int64_t b = 0; b < g.Wr; ++b) {
        if (g.norm == NONE) {
          for (int64_t p = 0; p < KK; ++p) {
            bool ok = row_ok(g, a, p / K) && (!g.ignore || colmask[(p % K) * Wb + R + b] != T(0));
            gl[p * Wb + b] = ok ? gw[p * Wb + b] : T(0);
          }
          continue;
        }
        T dot = 0, hsum = 0;
        for (int64_t p = 0; p < KK; ++p) {
          bool ok = row_ok(g, a, p / K) && (!g.ignore || colmask[(p % K) * Wb + R + b] != T(0));
          dot += w[p * Wb + b] * gw[p * Wb + b];
          if (ok) hsum += h_fn(s[p * Wb + b], g.norm);
        }
        T inv = T(1) / (hsum + T(kNormEps));
        for (int64_t p = 0; p < KK; ++p) {
          bool ok = row_ok(g, a, p / K) && (!g.ignore || colmask[(p % K) * Wb + R + b] != T(0));
          gl[p * Wb + b] = ok ? (gw[p * Wb + b] - dot) * inv * h_prime(s[p * Wb + b], g.norm) : T(0);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------
template <typename T>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, const Geo& g) {
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const std::vector<T> colmask = column_mask<T>(g);
  at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> qph(g.d * g.Pm * g.Wb, T(0)), S(g.Pm * g.KK * g.Wb, T(0)), Wt(g.Pm * g.KK * g.Wb, T(0)),
        O(2 * g.Pm * g.Wb, T(0));
    RowRing<T> kring(kp, g.d, g), vring(vp, g.C, g);
    for (int64_t grp = begin; grp < end; ++grp) {
      const int64_t n = grp / g.H, a = grp % g.H, nP = g.nu(a) * g.mc;
      gather_phases(qp, qph.data(), n, a, g.d, g);
      window_dot(qph.data(), kring.at(n, a), S.data(), nP, g.d, g);
      normalize(S.data(), Wt.data(), nP, a, colmask.data(), g);
      window_sum_scatter(Wt.data(), vring.at(n, a), op, n, a, g.C, O.data(), g);
    }
  });
}

// ---------------------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------------------
// stage 2: G[n][:, y, :] (c_n channels, unpadded NCHW) = sum over the windows that contain
// (y, x) of A_a[P][p][R + b] * X_a[c][P][R + b], with a = y + R - dy, p = (dy, dx) and
// b = x + R - dx. Ag[dy], Xg[dy]: the buffers of group a (nullptr outside the map).
template <typename T, int NB>
inline void scatter_rows_block(const T* const* Ag, const T* const* Xg, T* G, int64_t n, int64_t y, int64_t c0,
                               int64_t c_n, T* tmp, const Geo& g) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  const int64_t cstride = g.Pm * g.Wb;
  for (int64_t xv = 0; xv < g.Wr; xv += L) {
    V acc[NB];
    for (int t = 0; t < NB; ++t) acc[t] = vsplat<T>(0);
    for (int64_t dy = 0; dy < g.K; ++dy) {
      if (Ag[dy] == nullptr) continue;
      const int64_t nP = g.nu(y + g.R - dy) * g.mc;
      const T* A = Ag[dy];
      const T* X = Xg[dy] + c0 * cstride;
      for (int64_t P = 0; P < nP; ++P) {
        for (int64_t dx = 0; dx < g.K; ++dx) {
          const int64_t col = xv + 2 * g.R - dx;
          V av = vload(A + (P * g.KK + dy * g.K + dx) * g.Wb + col);
          const T* xp = X + P * g.Wb + col;
          for (int t = 0; t < NB; ++t) acc[t] += av * vload(xp + t * cstride);
        }
      }
    }
    for (int t = 0; t < NB; ++t) vstore(tmp + t * g.Wr + xv, acc[t]);
  }
  for (int t = 0; t < NB; ++t)
    std::memcpy(G + ((n * c_n + c0 + t) * g.H + y) * g.W, tmp + t * g.Wr, g.W * sizeof(T));
}

template <typename T>
void scatter_rows(const T* const* Ag, const T* const* Xg, T* G, int64_t n, int64_t y, int64_t c_n, T* tmp,
                  const Geo& g) {
  int64_t c = 0;
  for (; c + 8 <= c_n; c += 8) scatter_rows_block<T, 8>(Ag, Xg, G, n, y, c, c_n, tmp, g);
  for (; c + 4 <= c_n; c += 4) scatter_rows_block<T, 4>(Ag, Xg, G, n, y, c, c_n, tmp, g);
  for (; c + 2 <= c_n; c += 2) scatter_rows_block<T, 2>(Ag, Xg, G, n, y, c, c_n, tmp, g);
  for (; c < c_n; ++c) scatter_rows_block<T, 1>(Ag, Xg, G, n, y, c, c_n, tmp, g);
}

template <typename T>
void backward_impl(const at::Tensor& go, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   at::Tensor& gq, at::Tensor& gk, at::Tensor& gv, bool need_q, bool need_k, bool need_v,
                   const Geo& g) {
  const T* gop = go.data_ptr<T>();
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const std::vector<T> colmask = column_mask<T>(g);
  const int64_t grp_w = g.Pm * g.KK * g.Wb, grp_q = g.d * g.Pm * g.Wb, grp_g = g.C * g.Pm * g.Wb;
  auto opts = q.options();
  // stage-1 results per group (zeros outside the valid entries): weights, logit gradients,
  // query in phases; small next to the maps (K*K or d numbers per output pixel)
  at::Tensor Wbuf = need_v ? at::zeros({g.B * g.H * grp_w}, opts) : at::Tensor();
  at::Tensor GLbuf = need_k ? at::zeros({g.B * g.H * grp_w}, opts) : at::Tensor();
  at::Tensor Qbuf = need_k ? at::zeros({g.B * g.H * grp_q}, opts) : at::Tensor();
  T* Wp = need_v ? Wbuf.data_ptr<T>() : nullptr;
  T* GLp = need_k ? GLbuf.data_ptr<T>() : nullptr;
  T* Qp = need_k ? Qbuf.data_ptr<T>() : nullptr;
  T* gqp = need_q ? gq.data_ptr<T>() : nullptr;
  const bool need_gl = need_q || need_k;

  at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> S(grp_w, T(0)), Wl(grp_w, T(0)), Gw(grp_w, T(0)), Gl(grp_w, T(0)), O(2 * g.Pm * g.Wb, T(0));
    std::vector<T> ql(need_k ? 0 : grp_q, T(0)), gph(need_gl ? grp_g : 0, T(0));
    RowRing<T> kring(kp, g.d, g), vring(vp, g.C, g);
    for (int64_t grp = begin; grp < end; ++grp) {
      const int64_t n = grp / g.H, a = grp % g.H, nP = g.nu(a) * g.mc;
      T* qph = need_k ? Qp + grp * grp_q : ql.data();
      T* w = need_v ? Wp + grp * grp_w : Wl.data();
      T* gl = need_k ? GLp + grp * grp_w : Gl.data();
      gather_phases(qp, qph, n, a, g.d, g);
      const Rows<T> krows = kring.at(n, a);
      window_dot(qph, krows, S.data(), nP, g.d, g);
      normalize(S.data(), w, nP, a, colmask.data(), g);
      if (need_gl) {
        gather_phases(gop, gph.data(), n, a, g.C, g);
        window_dot(gph.data(), vring.at(n, a), Gw.data(), nP, g.C, g);
        normalize_backward(S.data(), w, Gw.data(), gl, nP, a, colmask.data(), g);
        if (need_q) window_sum_scatter(gl, krows, gqp, n, a, g.d, O.data(), g);
      }
    }
  });
  if (!(need_k || need_v)) return;
  T* gkp = need_k ? gk.data_ptr<T>() : nullptr;
  T* gvp = need_v ? gv.data_ptr<T>() : nullptr;
  at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> tmp(8 * g.Wr);
    // grad_out in phases for the K groups around y, in a ring of K slots
    std::vector<T> gring(need_v ? g.K * grp_g : 0, T(0));
    std::vector<const T*> Ag(g.K), Xg(g.K);
    int64_t ring_n = -1, ring_last = -1;  // groups <= ring_last of batch ring_n are loaded
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.H, y = row % g.H;
      if (need_v) {
        int64_t first = std::max<int64_t>(0, y - g.R);
        if (n == ring_n) first = std::max(first, ring_last + 1);
        const int64_t last = std::min<int64_t>(g.H - 1, y + g.R);
        for (int64_t a = first; a <= last; ++a) gather_phases(gop, gring.data() + (a % g.K) * grp_g, n, a, g.C, g);
        ring_n = n;
        ring_last = last;
        for (int64_t dy = 0; dy < g.K; ++dy) {
          const int64_t a = y + g.R - dy;
          const bool in = a >= 0 && a < g.H;
          Ag[dy] = in ? Wp + (n * g.H + a) * grp_w : nullptr;
          Xg[dy] = in ? gring.data() + (a % g.K) * grp_g : nullptr;
        }
        scatter_rows(Ag.data(), Xg.data(), gvp, n, y, g.C, tmp.data(), g);
      }
      if (need_k) {
        for (int64_t dy = 0; dy < g.K; ++dy) {
          const int64_t a = y + g.R - dy;
          const bool in = a >= 0 && a < g.H;
          Ag[dy] = in ? GLp + (n * g.H + a) * grp_w : nullptr;
          Xg[dy] = in ? Qp + (n * g.H + a) * grp_q : nullptr;
        }
        scatter_rows(Ag.data(), Xg.data(), gkp, n, y, g.d, tmp.data(), g);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// reassembly with given kernels (CARAFE, FADE, A2U, ...): out = sum_p kernels[p] * x[window]
// ---------------------------------------------------------------------------------------
// The (B, K*K, H', W') kernels take the weights' part: a group's kernels are gathered into
// the weights' phase layout [P][p][Wb] (split_kernel_row), and the forward is the SAPA
// forward's assembly (window_sum_scatter) of the padded x rows. Backward, one low-res row y
// at a time (parallel over B x H): the kernel gradient of group y is window_dot of grad_out
// in phases with the padded x rows around y (SAPA's weight gradient), joined back to NCHW;
// the x gradient of row y is scatter_rows over the K groups whose windows hold it (SAPA's
// value gradient), their kernels and grad_out in phases kept in rings of K groups. Every
// entry is written by one thread in a fixed order: bitwise repeatable for any thread count.

// phase-buffer index of column j in the [P][p][Wb] layout: v * KK * Wb + R + b
std::vector<int64_t> kernel_index(const Geo& g) {
  std::vector<int64_t> idx(g.Wq);
  for (int64_t j = 0; j < g.Wq; ++j) idx[j] = (g.idxcol[j] / g.Wb) * g.KK * g.Wb + g.idxcol[j] % g.Wb;
  return idx;
}

// one output row of kernel channel p <-> its phases, ph = first phase row (v = 0) of (u, p)
template <typename T, int MC>
inline void split_row_s(const T* row, T* ph, int64_t W, int64_t vstride) {
  for (int64_t b = 0; b < W; ++b)
    for (int v = 0; v < MC; ++v) ph[v * vstride + b] = row[b * MC + v];
}
template <typename T, int MC>
inline void join_row_s(const T* ph, T* row, int64_t W, int64_t vstride) {
  for (int64_t b = 0; b < W; ++b)
    for (int v = 0; v < MC; ++v) row[b * MC + v] = ph[v * vstride + b];
}
template <typename T>
inline void split_kernel_row(const T* row, T* ph, const int64_t* idx, const Geo& g) {
  const int64_t vs = g.KK * g.Wb;
  if (g.exact_w && g.mc == 1) return split_row_s<T, 1>(row, ph + g.R, g.W, vs);
  if (g.exact_w && g.mc == 2) return split_row_s<T, 2>(row, ph + g.R, g.W, vs);
  if (g.exact_w && g.mc == 3) return split_row_s<T, 3>(row, ph + g.R, g.W, vs);
  if (g.exact_w && g.mc == 4) return split_row_s<T, 4>(row, ph + g.R, g.W, vs);
  for (int64_t j = 0; j < g.Wq; ++j) ph[idx[j]] = row[j];
}
template <typename T>
inline void join_kernel_row(const T* ph, T* row, const int64_t* idx, const Geo& g) {
  const int64_t vs = g.KK * g.Wb;
  if (g.exact_w && g.mc == 1) return join_row_s<T, 1>(ph + g.R, row, g.W, vs);
  if (g.exact_w && g.mc == 2) return join_row_s<T, 2>(ph + g.R, row, g.W, vs);
  if (g.exact_w && g.mc == 3) return join_row_s<T, 3>(ph + g.R, row, g.W, vs);
  if (g.exact_w && g.mc == 4) return join_row_s<T, 4>(ph + g.R, row, g.W, vs);
  for (int64_t j = 0; j < g.Wq; ++j) row[j] = ph[idx[j]];
}

// the kernels (B, KK, H', W') of group a into phases dst[P][p][Wb] (valid entries only)
template <typename T>
void gather_kernels(const T* src, T* dst, int64_t n, int64_t a, const int64_t* idx, const Geo& g) {
  const int64_t nu = g.nu(a), i0 = g.firstr[a];
  for (int64_t p = 0; p < g.KK; ++p)
    for (int64_t u = 0; u < nu; ++u)
      split_kernel_row(src + ((n * g.KK + p) * g.Hq + i0 + u) * g.Wq, dst + (u * g.mc * g.KK + p) * g.Wb, idx, g);
}
template <typename T>
void scatter_kernels(const T* src, T* dst, int64_t n, int64_t a, const int64_t* idx, const Geo& g) {
  const int64_t nu = g.nu(a), i0 = g.firstr[a];
  for (int64_t p = 0; p < g.KK; ++p)
    for (int64_t u = 0; u < nu; ++u)
      join_kernel_row(src + (u * g.mc * g.KK + p) * g.Wb, dst + ((n * g.KK + p) * g.Hq + i0 + u) * g.Wq, idx, g);
}

template <typename T>
void reassemble_forward_impl(const at::Tensor& x, const at::Tensor& k, at::Tensor& out, const Geo& g) {
  const T* xp = x.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const std::vector<int64_t> idx = kernel_index(g);
  at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> Wt(g.Pm * g.KK * g.Wb, T(0)), O(2 * g.Pm * g.Wb, T(0));
    RowRing<T> xring(xp, g.C, g);
    for (int64_t grp = begin; grp < end; ++grp) {
      const int64_t n = grp / g.H, a = grp % g.H;
      gather_kernels(kp, Wt.data(), n, a, idx.data(), g);
      window_sum_scatter(Wt.data(), xring.at(n, a), op, n, a, g.C, O.data(), g);
    }
  });
}

template <typename T>
void reassemble_backward_impl(const at::Tensor& go, const at::Tensor& x, const at::Tensor& k, at::Tensor& gx,
                              at::Tensor& gk, bool need_x, bool need_k, const Geo& g) {
  const T* gop = go.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  T* gxp = need_x ? gx.data_ptr<T>() : nullptr;
  T* gkp = need_k ? gk.data_ptr<T>() : nullptr;
  const std::vector<int64_t> idx = kernel_index(g);
  const int64_t grp_w = g.Pm * g.KK * g.Wb, grp_g = g.C * g.Pm * g.Wb;
  at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    // kernels and grad_out in phases for the K groups around y, in rings of K slots
    std::vector<T> kring(need_x ? g.K * grp_w : 0, T(0)), gring(g.K * grp_g, T(0));
    std::vector<T> S(need_k ? grp_w : 0, T(0)), tmp(8 * g.Wr);
    RowRing<T> xring(xp, need_k ? g.C : 0, g);
    std::vector<const T*> Ag(g.K), Xg(g.K);
    int64_t ring_n = -1, ring_last = -1;  // groups <= ring_last of batch ring_n are loaded
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.H, y = row % g.H;
      if (n != ring_n) ring_last = -1;
      const int64_t first = std::max(need_x ? std::max<int64_t>(0, y - g.R) : y, ring_last + 1);
      const int64_t last = need_x ? std::min<int64_t>(g.H - 1, y + g.R) : y;
      for (int64_t a = first; a <= last; ++a) {
        gather_phases(gop, gring.data() + (a % g.K) * grp_g, n, a, g.C, g);
        if (need_x) gather_kernels(kp, kring.data() + (a % g.K) * grp_w, n, a, idx.data(), g);
      }
      ring_n = n;
      ring_last = std::max(ring_last, last);
      if (need_k) {
        window_dot(gring.data() + (y % g.K) * grp_g, xring.at(n, y), S.data(), g.nu(y) * g.mc, g.C, g);
        scatter_kernels(S.data(), gkp, n, y, idx.data(), g);
      }
      if (need_x) {
        for (int64_t dy = 0; dy < g.K; ++dy) {
          const int64_t a = y + g.R - dy;
          const bool in = a >= 0 && a < g.H;
          Ag[dy] = in ? kring.data() + (a % g.K) * grp_w : nullptr;
          Xg[dy] = in ? gring.data() + (a % g.K) * grp_g : nullptr;
        }
        scatter_rows(Ag.data(), Xg.data(), gxp, n, y, g.C, tmp.data(), g);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// entry points
// ---------------------------------------------------------------------------------------
void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t K, int64_t norm) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "sapa_cpu: CPU tensors only");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "sapa_cpu: 4-d tensors expected");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "sapa_cpu: one dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble, "sapa_cpu: float32 or float64");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(0) == v.size(0) && q.size(1) == k.size(1), "sapa_cpu: shapes");
  TORCH_CHECK(k.size(2) == v.size(2) && k.size(3) == v.size(3), "sapa_cpu: key and value sizes differ");
  TORCH_CHECK(q.size(2) >= k.size(2) && q.size(3) >= k.size(3), "sapa_cpu: output smaller than input");
  TORCH_CHECK(k.size(2) > 0 && k.size(3) > 0, "sapa_cpu: empty map");
  TORCH_CHECK(K > 0 && K % 2 == 1, "sapa_cpu: kernel_size must be odd");
  TORCH_CHECK(norm >= 0 && norm <= 4, "sapa_cpu: unknown normalization code");
}

int lanes(const at::Tensor& q) { return q.scalar_type() == at::kFloat ? VT<float>::L : VT<double>::L; }

at::Tensor sapa_forward(at::Tensor q, at::Tensor k, at::Tensor v, int64_t K, int64_t norm, bool ignore) {
  check_inputs(q, k, v, K, norm);
  q = q.contiguous();
  k = k.contiguous();
  v = v.contiguous();
  Geo g(q, k, v, K, ignore, static_cast<int>(norm), lanes(q));
  at::Tensor out = at::empty({g.B, g.C, g.Hq, g.Wq}, v.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sapa_forward", [&] { forward_impl<scalar_t>(q, k, v, out, g); });
  return out;
}

std::vector<at::Tensor> sapa_backward(at::Tensor go, at::Tensor q, at::Tensor k, at::Tensor v, int64_t K,
                                      int64_t norm, bool ignore, bool need_q, bool need_k, bool need_v) {
  check_inputs(q, k, v, K, norm);
  TORCH_CHECK(go.scalar_type() == q.scalar_type(), "sapa_cpu: grad_out dtype");
  go = go.contiguous();
  q = q.contiguous();
  k = k.contiguous();
  v = v.contiguous();
  Geo g(q, k, v, K, ignore, static_cast<int>(norm), lanes(q));
  TORCH_CHECK(go.dim() == 4 && go.size(0) == g.B && go.size(1) == g.C && go.size(2) == g.Hq && go.size(3) == g.Wq,
              "sapa_cpu: grad_out shape");
  at::Tensor gq = need_q ? at::zeros_like(q) : at::Tensor();  // every row is written; zeros if C == 0
  at::Tensor gk = need_k ? at::empty_like(k, at::MemoryFormat::Contiguous) : at::Tensor();
  at::Tensor gv = need_v ? at::empty_like(v, at::MemoryFormat::Contiguous) : at::Tensor();
  if (!(need_q || need_k || need_v)) return {gq, gk, gv};
  if (q.numel() == 0 || v.numel() == 0 || go.numel() == 0) {
    if (need_k) gk.zero_();
    if (need_v) gv.zero_();
    return {gq, gk, gv};
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sapa_backward", [&] {
    backward_impl<scalar_t>(go, q, k, v, gq, gk, gv, need_q, need_k, need_v, g);
  });
  return {gq, gk, gv};
}


void check_reassemble(const at::Tensor& x, const at::Tensor& k, int64_t K) {
  TORCH_CHECK(x.device().is_cpu() && k.device().is_cpu(), "reassemble_cpu: CPU tensors only");
  TORCH_CHECK(x.dim() == 4 && k.dim() == 4, "reassemble_cpu: 4-d tensors expected");
  TORCH_CHECK(x.scalar_type() == k.scalar_type(), "reassemble_cpu: one dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "reassemble_cpu: float32 or float64");
  TORCH_CHECK(K > 0 && K % 2 == 1, "reassemble_cpu: kernel_size must be odd");
  TORCH_CHECK(k.size(0) == x.size(0) && k.size(1) == K * K, "reassemble_cpu: kernels must be (B, K*K, H', W')");
  TORCH_CHECK(k.size(2) >= x.size(2) && k.size(3) >= x.size(3), "reassemble_cpu: output smaller than input");
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, "reassemble_cpu: empty map");
}

at::Tensor reassemble_forward(at::Tensor x, at::Tensor k, int64_t K) {
  check_reassemble(x, k, K);
  x = x.contiguous();
  k = k.contiguous();
  Geo g(k, x, x, K, false, NONE, lanes(x));
  at::Tensor out = at::empty({g.B, g.C, g.Hq, g.Wq}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "reassemble_forward",
                             [&] { reassemble_forward_impl<scalar_t>(x, k, out, g); });
  return out;
}

std::vector<at::Tensor> reassemble_backward(at::Tensor go, at::Tensor x, at::Tensor k, int64_t K, bool need_x,
                                            bool need_k) {
  check_reassemble(x, k, K);
  TORCH_CHECK(go.scalar_type() == x.scalar_type(), "reassemble_cpu: grad_out dtype");
  TORCH_CHECK(go.dim() == 4 && go.size(0) == x.size(0) && go.size(1) == x.size(1) && go.size(2) == k.size(2) &&
                  go.size(3) == k.size(3),
              "reassemble_cpu: grad_out shape");
  go = go.contiguous();
  x = x.contiguous();
  k = k.contiguous();
  Geo g(k, x, x, K, false, NONE, lanes(x));
  at::Tensor gx = need_x ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::Tensor();
  at::Tensor gk = need_k ? at::empty_like(k, at::MemoryFormat::Contiguous) : at::Tensor();
  if (!(need_x || need_k)) return {gx, gk};
  if (go.numel() == 0) {  // B = 0, C = 0 or an empty output: every sum is empty
    if (need_x) gx.zero_();
    if (need_k) gk.zero_();
    return {gx, gk};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "reassemble_backward",
                             [&] { reassemble_backward_impl<scalar_t>(go, x, k, gx, gk, need_x, need_k, g); });
  return {gx, gk};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &sapa_forward, "SAPA forward (CPU): query, key, value, kernel_size, norm code, ignore");
  m.def("backward", &sapa_backward,
        "SAPA backward (CPU): grad_out, query, key, value, kernel_size, norm code, ignore, need_q, need_k, need_v");
  m.def("reassemble_forward", &reassemble_forward, "reassembly with given kernels (CPU): x, kernels, kernel_size");
  m.def("reassemble_backward", &reassemble_backward,
        "reassembly backward (CPU): grad_out, x, kernels, kernel_size, need_x, need_kernels -> (grad_x, grad_kernels)");
}
