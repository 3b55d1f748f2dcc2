#pragma once
// Device twins of critical(<scorer>) and critical_adakv(<scorer>) (formulas in
// reference/presses/criticalkv.cpp; shared arithmetic in reference/criticalkv.h). The
// projected norms |W_o^h v_t|_1 are one GEMM per query head ([n, d] x [d, D], so memory stays
// at n * D floats) and a row sum of absolute values.
#include <cfloat>

#include "core/wrapping.h"
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "reference/criticalkv.h"

namespace kvsim::cuda {

// vwl1norm: out [Hkv, n] = per KV head and token, |W_o^h v_t|_1 averaged over its query heads.
template <typename Exec>
void criticalkv_norms_on_device(Exec& exec, const DeviceLayer<Exec>& layer, const LayerTensors& host, float* out) {
  using FloatBuffer = typename Exec::template Buffer<float>;
  const int H = layer.H, Hkv = layer.Hkv, d = layer.d, n = layer.n, D = host.o_proj_rows, group = H / Hkv;
  const long cols = static_cast<long>(H) * d;
  FloatBuffer weights(host.o_proj.size()), product(static_cast<std::size_t>(n) * D), norm_buffer(static_cast<std::size_t>(H) * n);
  weights.upload(host.o_proj.data(), host.o_proj.size());
  float* prod = product.data();
  float* norms = norm_buffer.data();
  const auto values = layer.v.floats(exec);  // float32 copy
  for (int h = 0; h < H; ++h) {
    StridedGemm<float> g;
    g.trans_b = true;
    g.m = n;
    g.n = D;
    g.k = d;
    g.a = values.data() + static_cast<long>(h / group) * n * d;
    g.lda = d;
    g.b = weights.data() + static_cast<long>(h) * d;
    g.ldb = cols;
    g.c = prod;
    g.ldc = D;
    exec.gemm(g);
    exec.for_each(static_cast<long>(n) * D, [=] KVSIM_HD(long i) { prod[i] = fabsf(prod[i]); });
    exec.row_reduce(static_cast<const float*>(prod), n, static_cast<long>(D), norms + static_cast<long>(h) * n, Reduce::sum);
  }
  exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) { out[i] = ref::criticalkv_group_mean(norms, group, n, i / n, i % n); });
}

// Stage 2 in place: s = (s + epsilon) * norm.
template <typename Exec>
void criticalkv_rescale_on_device(Exec& exec, float* s, const float* norms, long count, float epsilon) {
  exec.for_each(count, [=] KVSIM_HD(long i) { s[i] = ref::criticalkv_rescale(s[i], epsilon, norms[i]); });
}

// The top k[g] entries of each row g (k on the device) of `ranked` become FLT_MAX in `target`
// (the same shape; it may be `ranked` itself: the order is taken first).
template <typename Exec>
void raise_top_on_device(Exec& exec, const float* ranked, float* target, int rows, int n, const int* k) {
  const auto order = sorted_positions(exec, ranked, rows, n);
  const int* sorted = order.data();
  exec.for_each(static_cast<long>(rows) * n, [=] KVSIM_HD(long i) {
    const long g = i / n;
    if (i % n < k[g]) target[g * n + sorted[i]] = FLT_MAX;
  });
}

// The same k for every row.
template <typename Exec>
void raise_top_on_device(Exec& exec, const float* ranked, float* target, int rows, int n, int k) {
  if (k <= 0) return;
  const std::vector<int> host(static_cast<std::size_t>(rows), k);
  typename Exec::template Buffer<int> k_buffer(host.size());
  k_buffer.upload(host.data(), host.size());
  raise_top_on_device(exec, ranked, target, rows, n, static_cast<const int*>(k_buffer.data()));
}

template <typename Exec>
class CriticalKvDevice final : public DeviceScorer<Exec> {
 public:
  explicit CriticalKvDevice(const PressConfig& c)
      : DeviceScorer<Exec>("critical"),
        inner_(make_inner_device_scorer<Exec>(c)),
        epsilon_(static_cast<float>(c.params.get("epsilon"))),
        first_stage_(c.params.get("first_stage_ratio")) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& layer, double ratio, float* out) const override {
    require_o_proj(this->name(), *layer.source);
    const auto inner = inner_->device_scores(exec, layer, ratio);
    const long count = static_cast<long>(layer.Hkv) * layer.n;
    typename Exec::template Buffer<float> norms(count);
    criticalkv_norms_on_device(exec, layer, *layer.source, norms.data());
    const float* s = inner.data();
    exec.for_each(count, [=] KVSIM_HD(long i) { out[i] = s[i]; });
    criticalkv_rescale_on_device(exec, out, norms.data(), count, epsilon_);
    raise_top_on_device(exec, inner.data(), out, layer.Hkv, layer.n, ref::criticalkv_first_stage(layer.n, ratio, first_stage_));
    inner.throw_if_nan(exec);
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
  float epsilon_;
  double first_stage_;
};

template <typename Exec>
class CriticalAdaKvDevice final : public Press {
 public:
  explicit CriticalAdaKvDevice(const PressConfig& c)
      : inner_(make_inner_device_scorer<Exec>(c)),
        alpha_(c.params.get("alpha_safeguard")),
        epsilon_(static_cast<float>(c.params.get("epsilon"))),
        first_stage_(c.params.get("first_stage_ratio")) {}

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    require_o_proj("critical_adakv", input.layer);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    auto scores = inner_->device_scores(exec, layer, ratio);
    scores.throw_if_nan(exec);  // before the scores are overwritten below
    float* s = scores.data();
    const int Hkv = layer.Hkv, n = layer.n, n_kept = kvpress_budget(n, ratio);
    raise_top_on_device(exec, s, s, Hkv, n, adakv_safeguard(n_kept, alpha_));
    const long total = static_cast<long>(Hkv) * n_kept;
    const Compression shares = select_topk_global(exec, s, Hkv, n, total);
    std::vector<int> budgets, stage1;
    for (const auto& head : shares.kept) {
      budgets.push_back(static_cast<int>(head.size()));
      stage1.push_back(ref::criticalkv_head_first_stage(budgets.back(), first_stage_));
    }
    typename Exec::template Buffer<int> budget_buffer(budgets.size()), stage1_buffer(stage1.size());
    budget_buffer.upload(budgets.data(), budgets.size());
    stage1_buffer.upload(stage1.data(), stage1.size());
    raise_top_on_device(exec, s, s, Hkv, n, static_cast<const int*>(stage1_buffer.data()));
    typename Exec::template Buffer<float> norms(static_cast<std::size_t>(Hkv) * n);
    criticalkv_norms_on_device(exec, layer, input.layer, norms.data());
    criticalkv_rescale_on_device(exec, s, norms.data(), static_cast<long>(Hkv) * n, epsilon_);
    raise_top_on_device(exec, s, s, Hkv, n, static_cast<const int*>(budget_buffer.data()));
    return select_topk_global(exec, s, Hkv, n, total);
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
  double alpha_;
  float epsilon_;
  double first_stage_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("critical", CriticalKvDevice)
KVSIM_DEVICE_PRESS("critical_adakv", CriticalAdaKvDevice)
