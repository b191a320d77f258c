// The body of the row kernels declared in row_kernels.h, written once for any
// vector type Vec (vec_avx2.h, vec_avx512.h, or the W = 1 stand-in of
// kernels_scalar.cpp) and compiled
// once per ISA by kernels_<isa>.cpp inside its own namespace. The vector loop
// does exactly the float operations of quant_math.h in the same order, and the
// tail uses quant_math.h itself, so every ISA gives bit-identical results.
//
// Include this file inside the ISA's namespace, after its target pragma and
// after `using V = <vector type>;`.

// Rows at least this long (elements) are quantized with streaming stores.
constexpr int64_t kStreamMin = int64_t{1} << 20;

template <typename T>
inline float to_float(T v) {
  return static_cast<float>(v);
}

template <typename Vec, typename In>
void minmax_impl(const In* x, int64_t n, float* lo, float* hi) {
  float l = INFINITY, h = -INFINITY;
  int64_t i = 0;
  if constexpr (Vec::W > 1) {
    // Two accumulator pairs hide the latency of min/max.
    typename Vec::F l0 = Vec::set1(INFINITY), l1 = l0, h0 = Vec::set1(-INFINITY), h1 = h0;
    const typename Vec::F pinf = l0, ninf = h0;
    for (; i + 2 * Vec::W <= n; i += 2 * Vec::W) {
      typename Vec::F a = Vec::load(x + i), b = Vec::load(x + i + Vec::W);
      l0 = Vec::min(l0, Vec::if_finite(a, pinf));
      h0 = Vec::max(h0, Vec::if_finite(a, ninf));
      l1 = Vec::min(l1, Vec::if_finite(b, pinf));
      h1 = Vec::max(h1, Vec::if_finite(b, ninf));
    }
    for (; i + Vec::W <= n; i += Vec::W) {
      typename Vec::F a = Vec::load(x + i);
      l0 = Vec::min(l0, Vec::if_finite(a, pinf));
      h0 = Vec::max(h0, Vec::if_finite(a, ninf));
    }
    l = Vec::reduce_min(Vec::min(l0, l1));
    h = Vec::reduce_max(Vec::max(h0, h1));
  }
  for (; i < n; ++i) {
    const float v = to_float(x[i]);
    if (torch_quant::is_finite(v)) {
      l = fminf(l, v);
      h = fmaxf(h, v);
    }
  }
  *lo = fminf(*lo, l);
  *hi = fmaxf(*hi, h);
}

template <typename Vec, typename In>
void minmax_columns_impl(const In* x, int64_t n, float* lo, float* hi) {
  int64_t i = 0;
  if constexpr (Vec::W > 1) {
    const typename Vec::F pinf = Vec::set1(INFINITY), ninf = Vec::set1(-INFINITY);
    for (; i + Vec::W <= n; i += Vec::W) {
      typename Vec::F a = Vec::load(x + i);
      Vec::store(lo + i, Vec::min(Vec::load(lo + i), Vec::if_finite(a, pinf)));
      Vec::store(hi + i, Vec::max(Vec::load(hi + i), Vec::if_finite(a, ninf)));
    }
  }
  for (; i < n; ++i) {
    const float v = to_float(x[i]);
    if (torch_quant::is_finite(v)) {
      lo[i] = fminf(lo[i], v);
      hi[i] = fmaxf(hi[i], v);
    }
  }
}


template <typename Vec, typename In, typename Q>
void quantize_impl(const In* x, int64_t n, float inv_scale, float zero_point, float qmin,
              float qmax, Q* q) {
  int64_t i = 0;
  if constexpr (Vec::W > 1) {
    using F = typename Vec::F;
    const F vinv = Vec::set1(inv_scale), vzp = Vec::set1(zero_point), vlo = Vec::set1(qmin),
            vhi = Vec::set1(qmax);
    const auto code = [&](F a) {
      const F r = Vec::min(Vec::max(Vec::round(Vec::fmadd(a, vinv, vzp)), vlo), vhi);
      return Vec::if_nan(a, r, vzp);
    };
    // Four vectors a step, so that AVX2 can narrow them into one full store.
    constexpr int W = Vec::W;
    if (n >= kStreamMin) {
      // A long row's codes will not be read again soon: write them around the
      // cache, which also saves reading each output line before writing it.
      // The scalar steps up to an aligned address give the same codes.
      for (; i < n && reinterpret_cast<uintptr_t>(q + i) % (4 * W) != 0; ++i) {
        q[i] = static_cast<Q>(
            torch_quant::quantize_val(to_float(x[i]), inv_scale, zero_point, qmin, qmax));
      }
      for (; i + 4 * W <= n; i += 4 * W) {
        Vec::stream4(q + i, code(Vec::load(x + i)), code(Vec::load(x + i + W)),
                     code(Vec::load(x + i + 2 * W)), code(Vec::load(x + i + 3 * W)));
      }
      Vec::stream_fence();
    }
    for (; i + 4 * W <= n; i += 4 * W) {
      Vec::store4(q + i, code(Vec::load(x + i)), code(Vec::load(x + i + W)),
                  code(Vec::load(x + i + 2 * W)), code(Vec::load(x + i + 3 * W)));
    }
    for (; i + W <= n; i += W) {
      Vec::store(q + i, code(Vec::load(x + i)));
    }
  }
  for (; i < n; ++i) {
    q[i] = static_cast<Q>(
        torch_quant::quantize_val(to_float(x[i]), inv_scale, zero_point, qmin, qmax));
  }
}

template <typename Vec, typename In, typename Q>
void quantize_pc_impl(const In* x, int64_t n, const float* inv_scale, const float* zero_point,
                 float qmin, float qmax, Q* q) {
  int64_t i = 0;
  if constexpr (Vec::W > 1) {
    const typename Vec::F vlo = Vec::set1(qmin), vhi = Vec::set1(qmax);
    for (; i + Vec::W <= n; i += Vec::W) {
      const typename Vec::F a = Vec::load(x + i), vzp = Vec::load(zero_point + i);
      typename Vec::F r = Vec::round(Vec::fmadd(a, Vec::load(inv_scale + i), vzp));
      r = Vec::min(Vec::max(r, vlo), vhi);
      Vec::store(q + i, Vec::if_nan(a, r, vzp));
    }
  }
  for (; i < n; ++i) {
    q[i] = static_cast<Q>(torch_quant::quantize_val(to_float(x[i]), inv_scale[i],
                                                    zero_point[i], qmin, qmax));
  }
}

template <typename Vec, typename Q, typename Out>
void dequantize_impl(const Q* q, int64_t n, float scale, float zero_point, Out* x) {
  int64_t i = 0;
  if constexpr (Vec::W > 1) {
    const typename Vec::F vs = Vec::set1(scale), vzp = Vec::set1(zero_point);
    for (; i + Vec::W <= n; i += Vec::W) {
      Vec::store(x + i, Vec::mul(Vec::sub(Vec::load(q + i), vzp), vs));
    }
  }
  for (; i < n; ++i) {
    x[i] = static_cast<Out>(torch_quant::dequantize_val(q[i], scale, zero_point));
  }
}

template <typename Vec, typename Q, typename Out>
void dequantize_pc_impl(const Q* q, int64_t n, const float* scale, const float* zero_point,
                   Out* x) {
  int64_t i = 0;
  if constexpr (Vec::W > 1) {
    for (; i + Vec::W <= n; i += Vec::W) {
      Vec::store(x + i, Vec::mul(Vec::sub(Vec::load(q + i), Vec::load(zero_point + i)),
                             Vec::load(scale + i)));
    }
  }
  for (; i < n; ++i) {
    x[i] = static_cast<Out>(torch_quant::dequantize_val(q[i], scale[i], zero_point[i]));
  }
}

// The names row_kernels.h declares, bound to this ISA's vector type.
template <typename In>
void minmax(const In* x, int64_t n, float* lo, float* hi) {
  minmax_impl<V, In>(x, n, lo, hi);
}

template <typename In>
void minmax_columns(const In* x, int64_t n, float* lo, float* hi) {
  minmax_columns_impl<V, In>(x, n, lo, hi);
}

template <typename In, typename Q>
void quantize(const In* x, int64_t n, float inv_scale, float zero_point, float qmin,
              float qmax, Q* q) {
  quantize_impl<V, In, Q>(x, n, inv_scale, zero_point, qmin, qmax, q);
}

template <typename In, typename Q>
void quantize_pc(const In* x, int64_t n, const float* inv_scale, const float* zero_point,
                 float qmin, float qmax, Q* q) {
  quantize_pc_impl<V, In, Q>(x, n, inv_scale, zero_point, qmin, qmax, q);
}

template <typename Q, typename Out>
void dequantize(const Q* q, int64_t n, float scale, float zero_point, Out* x) {
  dequantize_impl<V, Q, Out>(q, n, scale, zero_point, x);
}

template <typename Q, typename Out>
void dequantize_pc(const Q* q, int64_t n, const float* scale, const float* zero_point,
                   Out* x) {
  dequantize_pc_impl<V, Q, Out>(q, n, scale, zero_point, x);
}

// The butterfly of quant_math.h's hadamard_stages, stage by stage the same
// float operations (so the same bits), with fewer passes over the row:
// * stages h < W pair lanes of one vector: Vec::butterfly forms a + c and
//   a - c from the vector and its lane-swapped copy;
// * larger stages pair whole vectors; each pass loads 2^k vectors h apart
//   and runs k stages (h, 2h, ..., 2^(k-1) h) on them in registers (the first
//   pass also runs the in-vector stages first). Each value still goes through
//   the stages in order h = 1, 2, 4, ...
template <typename Vec, int k>
void hadamard_pass(float* v, int64_t n, int64_t h, bool in_vector_stages) {
  constexpr int R = 1 << k;
  for (int64_t r = 0; r < n; r += h * R) {
    for (int64_t j = r; j < r + h; j += Vec::W) {
      typename Vec::F x[R];
      for (int i = 0; i < R; ++i) {
        x[i] = Vec::load(v + j + i * h);
        if (in_vector_stages)
          for (int s = 1; s < Vec::W; s *= 2) x[i] = Vec::butterfly(x[i], s);
      }
      for (int t = 1; t < R; t *= 2) {
        for (int i = 0; i < R; ++i) {
          if (i & t) continue;
          const typename Vec::F a = x[i], c = x[i + t];
          x[i] = Vec::add(a, c);
          x[i + t] = Vec::sub(a, c);
        }
      }
      for (int i = 0; i < R; ++i) Vec::store(v + j + i * h, x[i]);
    }
  }
}

template <typename Vec>
void hadamard_impl(float* v, int64_t n, int64_t block) {
  if constexpr (Vec::W > 1) {
    if (block < Vec::W) {  // runs shorter than a vector: in-vector stages below block
      int64_t i = 0;
      for (; i + Vec::W <= n; i += Vec::W) {
        typename Vec::F x = Vec::load(v + i);
        for (int s = 1; s < block; s *= 2) x = Vec::butterfly(x, s);
        Vec::store(v + i, x);
      }
      torch_quant::hadamard_stages(v + i, n - i, 1, block);  // whole runs
      return;
    }
    // block >= W: n is a multiple of W; up to 3 vector stages per pass
    bool first = true;
    for (int64_t h = Vec::W; first || h < block;) {
      const int64_t left = block / h;  // 2^(stages left)
      if (left >= 8) {
        hadamard_pass<Vec, 3>(v, n, h, first);
        h *= 8;
      } else if (left == 4) {
        hadamard_pass<Vec, 2>(v, n, h, first);
        h *= 4;
      } else if (left == 2) {
        hadamard_pass<Vec, 1>(v, n, h, first);
        h *= 2;
      } else {
        hadamard_pass<Vec, 0>(v, n, h, first);
      }
      first = false;
    }
    return;
  }
  torch_quant::hadamard_stages(v, n, 1, block);
}

void hadamard(float* v, int64_t n, int64_t block) { hadamard_impl<V>(v, n, block); }

// Explicit instantiations: every (input, code) and (code, output) pair the ops use.
#define TQ_INSTANTIATE_IN(In)                                                         \
  template void minmax<In>(const In*, int64_t, float*, float*);                       \
  template void minmax_columns<In>(const In*, int64_t, float*, float*);               \
  template void quantize<In, int8_t>(const In*, int64_t, float, float, float, float,  \
                                     int8_t*);                                        \
  template void quantize<In, uint8_t>(const In*, int64_t, float, float, float, float, \
                                      uint8_t*);                                      \
  template void quantize_pc<In, int8_t>(const In*, int64_t, const float*,             \
                                        const float*, float, float, int8_t*);         \
  template void quantize_pc<In, uint8_t>(const In*, int64_t, const float*,            \
                                         const float*, float, float, uint8_t*);       \
  template void dequantize<int8_t, In>(const int8_t*, int64_t, float, float, In*);    \
  template void dequantize<uint8_t, In>(const uint8_t*, int64_t, float, float, In*);  \
  template void dequantize_pc<int8_t, In>(const int8_t*, int64_t, const float*,       \
                                          const float*, In*);                         \
  template void dequantize_pc<uint8_t, In>(const uint8_t*, int64_t, const float*,     \
                                           const float*, In*);

TQ_INSTANTIATE_IN(float)
TQ_INSTANTIATE_IN(c10::Half)
TQ_INSTANTIATE_IN(c10::BFloat16)
#undef TQ_INSTANTIATE_IN
