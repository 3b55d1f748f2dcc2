#pragma once
// The replay's evaluation on the device (core/evaluation.h), written once for both
// executors. Each layer is uploaded once — its compressed segment as the DeviceLayer every
// press of the run uses, the tokens after it, o_proj — and the full-cache outputs are
// computed once; each compression then costs a gather of its cache, two batched GEMMs around
// a masked softmax, and the metrics, of which only the numbers come back to the host.
#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "core/evaluation.h"
#include "cuda/stages.h"

namespace kvsim::cuda {

template <typename Exec>
class DeviceEvaluator final : public LayerEvaluator {
  using FloatBuffer = typename Exec::template Buffer<float>;
  using IntBuffer = typename Exec::template Buffer<int>;

 public:
  explicit DeviceEvaluator(const PressInput& input)
      : layer_(input), H_(input.num_heads()), Hkv_(input.num_kv_heads()), d_(input.head_dim()), n_(input.n),
        S_(input.layer.q.tokens - input.n), D_(input.layer.o_proj.empty() ? 0 : input.layer.o_proj_rows), window_(input.sliding_window) {
    const LayerTensors& x = input.layer;
    q_suffix_ = upload_rows(x.q, H_);
    k_suffix_ = upload_rows(x.k, Hkv_);
    v_suffix_ = upload_rows(x.v, Hkv_);
    if (D_) {
      o_proj_ = FloatBuffer(x.o_proj.size());
      o_proj_.upload(x.o_proj.data(), x.o_proj.size());
    }
    full_ = attend(keep_all(Hkv_, n_));
    if (D_) full_proj_ = project(full_.out);
  }

  const ResidentLayer* resident() const override { return &layer_; }

  LayerComparison compare(const Compression& compression) const override {
    const Outputs comp = attend(compression);
    const int d = d_;
    const long count = static_cast<long>(H_) * S_;
    typename Exec::template Buffer<double> metric_buffer(3 * static_cast<std::size_t>(count));
    double* metrics = metric_buffer.data();
    const float *full = full_.out.data(), *compressed = comp.out.data(), *lse_full = full_.lse.data(), *lse_comp = comp.lse.data();
    exec_.for_each(count, [=] KVSIM_HD(long i) {  // compare_outputs (reference/replay.h), per query
      double diff = 0, norm_full = 0, norm_comp = 0, dot = 0;
      for (int c = 0; c < d; ++c) {
        const double a = full[i * d + c], b = compressed[i * d + c];
        diff += (b - a) * (b - a);
        norm_full += a * a;
        norm_comp += b * b;
        dot += a * b;
      }
      metrics[i] = norm_full > 0 ? sqrt(diff / norm_full) : sqrt(diff);
      metrics[count + i] = (norm_full > 0 && norm_comp > 0) ? dot / sqrt(norm_full * norm_comp) : (diff == 0 ? 1.0 : 0.0);
      metrics[2 * count + i] = fmin(1.0, exp(static_cast<double>(lse_comp[i]) - static_cast<double>(lse_full[i])));
    });
    LayerComparison result;
    result.heads = H_;
    result.queries = S_;
    std::vector<double>* fields[] = {&result.rel_err, &result.cosine, &result.recall};
    for (std::size_t part = 0; part < 3; ++part) {
      fields[part]->resize(static_cast<std::size_t>(count));
      if (count) metric_buffer.download(fields[part]->data(), fields[part]->size(), part * count);
    }
    if (D_) result.oproj_rel_err = projection_errors(project(comp.out));
    return result;
  }

  // The stages below are public only because nvcc allows extended lambdas in public
  // member functions alone.
  struct Outputs {
    FloatBuffer out, lse;  // [H, S, d], [H, S]
  };

  // Rows [n, T) of every head of t: [heads, S, d].
  FloatBuffer upload_rows(const HeadTensor& t, int heads) const {
    FloatBuffer rows(static_cast<std::size_t>(heads) * S_ * d_);
    const std::size_t per_head = static_cast<std::size_t>(S_) * d_;
    for (int h = 0; h < heads; ++h) rows.upload(t.head(h) + static_cast<std::size_t>(n_) * d_, per_head, h * per_head);
    return rows;
  }

  // The evaluation queries over the compressed cache of each KV head — kept rows (merged
  // where the press merged), then the S later tokens — padded to one capacity C.
  Outputs attend(const Compression& c) const {
    const int H = H_, Hkv = Hkv_, d = d_, n = n_, S = S_, G = H / Hkv;
    std::vector<int> count(Hkv), offset(Hkv), merged_keys(Hkv), merged_values(Hkv), first_valid(H), positions;
    std::vector<float> key_rows, value_rows;  // merged rows, laid out like positions
    int longest = 0;
    for (int g = 0; g < Hkv; ++g) {
      count[g] = static_cast<int>(c.kept[g].size());
      offset[g] = static_cast<int>(positions.size());
      longest = std::max(longest, count[g]);
      positions.insert(positions.end(), c.kept[g].begin(), c.kept[g].end());
      merged_keys[g] = c.keys.empty() ? 0 : static_cast<int>(c.keys[g].size() / d);
      merged_values[g] = c.values.empty() ? 0 : static_cast<int>(c.values[g].size() / d);
      for (auto [rows, merged, count_of] : {std::tuple{&key_rows, &c.keys, merged_keys[g]}, {&value_rows, &c.values, merged_values[g]}}) {
        rows->resize(positions.size() * d, 0.0f);
        if (count_of) std::copy_n((*merged)[g].data(), static_cast<std::size_t>(count_of) * d, rows->begin() + static_cast<long>(offset[g]) * d);
      }
    }
    for (int h = 0; h < H; ++h) first_valid[h] = count[h / G] + 1;  // query i sees the kept rows and suffix rows 0 .. i
    const int C = longest + S;
    const auto count_d = to_device<Exec>(count), offset_d = to_device<Exec>(offset), mk_d = to_device<Exec>(merged_keys),
               mv_d = to_device<Exec>(merged_values), valid_d = to_device<Exec>(first_valid), positions_d = to_device<Exec>(positions);
    const auto key_rows_d = to_device<Exec>(key_rows), value_rows_d = to_device<Exec>(value_rows);
    FloatBuffer cache_k(static_cast<std::size_t>(Hkv) * C * d), cache_v(cache_k.size());
    const int *cnt = count_d.data(), *off = offset_d.data(), *mk = mk_d.data(), *mv = mv_d.data(), *pos = positions_d.data();
    const CacheRows rows{cnt, off, mk, mv, pos, key_rows_d.data(), value_rows_d.data(), C};
    float *ck = cache_k.data(), *cv = cache_v.data();
    with_common_storage(exec_, [&](const auto* lk, const auto* lv) { fill_cache(rows, lk, lv, ck, cv); }, layer_.k, layer_.v);
    Outputs o{FloatBuffer(static_cast<std::size_t>(H) * S * d), FloatBuffer(static_cast<std::size_t>(H) * S)};
    FloatBuffer probs(static_cast<std::size_t>(H) * S * C);
    for (int s = 0; s < G; ++s)  // query head g * G + s reads KV head g
      exec_.gemm(StridedGemm<float>{.trans_b = true, .m = S, .n = C, .k = d, .alpha = 1.0f / std::sqrt(static_cast<float>(d)),
                                    .a = q_suffix_.data() + static_cast<long>(s) * S * d, .lda = d, .stride_a = static_cast<long>(G) * S * d,
                                    .b = ck, .ldb = d, .stride_b = static_cast<long>(C) * d, .c = probs.data() + static_cast<long>(s) * S * C,
                                    .ldc = C, .stride_c = static_cast<long>(G) * S * C, .batch = Hkv});
    if (window_ > 0) {  // a sliding window: query n + s sees cached position p only when n + s - p < W
      const int W = window_;
      float* logits = probs.data();
      exec_.for_each(static_cast<long>(H) * S * C, [=] KVSIM_HD(long i) {
        const long g = i / (static_cast<long>(S) * C) / G;
        const int s = static_cast<int>(i / C % S), col = static_cast<int>(i % C), kept = cnt[g];
        const int position = col < kept ? pos[off[g] + col] : n + col - kept;  // beyond kept + s: masked by the softmax's prefix
        if (n + s - position >= W) logits[i] = -INFINITY;
      });
    }
    exec_.softmax_rows(probs.data(), SoftmaxRows{static_cast<long>(H) * S, C, S, 0, valid_d.data()}, o.lse.data());
    for (int s = 0; s < G; ++s)
      exec_.gemm(StridedGemm<float>{.m = S, .n = d, .k = C, .a = probs.data() + static_cast<long>(s) * S * C, .lda = C,
                                    .stride_a = static_cast<long>(G) * S * C, .b = cv, .ldb = d, .stride_b = static_cast<long>(C) * d,
                                    .c = o.out.data() + static_cast<long>(s) * S * d, .ldc = d, .stride_c = static_cast<long>(G) * S * d,
                                    .batch = Hkv});
    return o;
  }

  // Where a compressed cache's rows come from: per KV head its kept count, its first entry in
  // positions (and in the merged rows), how many of its kept rows are merged keys and values.
  struct CacheRows {
    const int *count, *offset, *merged_keys, *merged_values, *positions;
    const float *key_rows, *value_rows;
    int capacity;
  };

  // cache [Hkv, C, d] of keys and values: each head's kept rows (merged rows or the layer's, read
  // in its storage dtype), then the S later tokens, then zeros (probability 0, and finite).
  template <typename X>
  void fill_cache(const CacheRows& c, const X* lk, const X* lv, float* ck, float* cv) const {
    const int d = d_, n = n_, S = S_, C = c.capacity;
    const float *sk = k_suffix_.data(), *sv = v_suffix_.data();
    exec_.for_each(static_cast<long>(Hkv_) * C * d, [=] KVSIM_HD(long i) {
      const long g = i / (static_cast<long>(C) * d);
      const int r = static_cast<int>(i / d % C), col = static_cast<int>(i % d), kept = c.count[g];
      float key = 0.0f, value = 0.0f;
      if (r < kept) {
        const long row = c.offset[g] + r, source = (g * n + c.positions[row]) * d + col;
        key = r < c.merged_keys[g] ? c.key_rows[row * d + col] : static_cast<float>(lk[source]);
        value = r < c.merged_values[g] ? c.value_rows[row * d + col] : static_cast<float>(lv[source]);
      } else if (r < kept + S) {
        const long source = (g * S + r - kept) * d + col;
        key = sk[source];
        value = sv[source];
      }
      ck[i] = key;
      cv[i] = value;
    });
  }

  // The outputs through o_proj: [S, D] = concat_h(out_h) [S, H d] . W_o^T.
  FloatBuffer project(const FloatBuffer& out) const {
    const int S = S_, d = d_, width = H_ * d_;
    FloatBuffer concat(static_cast<std::size_t>(S) * width), projected(static_cast<std::size_t>(S) * D_);
    float* cat = concat.data();
    const float* o = out.data();
    exec_.for_each(static_cast<long>(S) * width, [=] KVSIM_HD(long i) {
      const long row = i / width, h = i % width / d;
      cat[i] = o[(h * S + row) * d + i % d];
    });
    exec_.gemm(StridedGemm<float>{.trans_b = true, .m = S, .n = D_, .k = width, .a = cat, .lda = width, .b = o_proj_.data(), .ldb = width,
                                  .c = projected.data(), .ldc = D_});
    return projected;
  }

  // Per query, |P_comp - P_full| / |P_full| in float64.
  std::vector<double> projection_errors(const FloatBuffer& projected) const {
    const int D = D_;
    typename Exec::template Buffer<double> errors(static_cast<std::size_t>(S_));
    double* err = errors.data();
    const float *full = full_proj_.data(), *comp = projected.data();
    exec_.for_each(S_, [=] KVSIM_HD(long i) {
      double norm = 0, diff = 0;
      for (int c = 0; c < D; ++c) {
        const double a = full[i * D + c], b = comp[i * D + c];
        norm += a * a;
        diff += (b - a) * (b - a);
      }
      err[i] = norm > 0 ? sqrt(diff) / sqrt(norm) : sqrt(diff);
    });
    std::vector<double> host(static_cast<std::size_t>(S_));
    if (!host.empty()) errors.download(host.data(), host.size());
    return host;
  }

 private:
  mutable Exec exec_;
  DeviceLayer<Exec> layer_;
  int H_, Hkv_, d_, n_, S_, D_, window_;
  FloatBuffer q_suffix_, k_suffix_, v_suffix_, o_proj_, full_proj_;
  Outputs full_;
};

}  // namespace kvsim::cuda
