// think — kvpress ThinKPress (arXiv 2407.21018): key-channel pruning; no token is dropped.
// Per KV head and channel c: score = (mean over the group's query heads of the mean of q_c^2
// over the segment's last window_size queries) x (mean of k_c^2 over the segment's keys),
// post-RoPE as kvpress computes them; the int(d x key_channel_compression_ratio) lowest
// channels are zeroed in every key of the segment (the keys later tokens bring keep every
// channel). kvpress's compression_ratio for it is key_channel_compression_ratio / 2 (keys are
// half the cache), which is what the replay reports as achieved. --ratio does not apply.
#include <algorithm>

#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/think.h"

namespace kvsim::ref {
namespace {

class ThinkPress final : public Press {
 public:
  explicit ThinkPress(const PressConfig& c)
      : channel_ratio_(c.params.get("key_channel_compression_ratio")), window_(c.params.get_int("window_size")) {}

  Compression compress(const PressInput& in, double) const override {
    const int n = in.n, d = in.head_dim(), Hkv = in.num_kv_heads(), G = in.num_heads() / Hkv;
    const int n_pruned = static_cast<int>(d * channel_ratio_), w = std::min(window_, n);
    Compression c = keep_all(Hkv, n);
    if (n_pruned == 0 || n == 0) return c;
    c.keys.resize(static_cast<std::size_t>(Hkv));
    c.key_channels_removed = static_cast<double>(n_pruned) / d;
    parallel_for(Hkv, [&](int g) {
      std::vector<double> score(static_cast<std::size_t>(d));
      for (int ch = 0; ch < d; ++ch) {
        double queries = 0.0;
        for (int h = g * G; h < (g + 1) * G; ++h) queries += think_mean_square(in.layer.q.head(h) + static_cast<std::size_t>(n - w) * d, w, d, ch);
        score[ch] = queries / G * think_mean_square(in.layer.k.head(g), n, d, ch);
      }
      const std::vector<int> kept = think_kept_channels(score.data(), d, n_pruned);
      std::vector<float>& keys = c.keys[g];
      keys.assign(static_cast<std::size_t>(n) * d, 0.0f);
      for (int t = 0; t < n; ++t)
        for (int ch : kept) keys[static_cast<std::size_t>(t) * d + ch] = in.layer.k.head(g)[static_cast<std::size_t>(t) * d + ch];
    });
    return c;
  }

 private:
  double channel_ratio_;
  int window_;
};

const Registrar registered({.name = "think",
                            .summary = "key-channel pruning by query x key channel energy; every token kept (arXiv 2407.21018)",
                            .params = {{"key_channel_compression_ratio", ParamType::Float, 0.0, 0.0, 0.999999, "share of key channels zeroed"},
                                       {"window_size", ParamType::Int, 32.0, 1.0, {}, "last queries of the segment that score the channels"}},
                            .uses_ratio = false,
                            .example = "think:key_channel_compression_ratio=0.5"},
                           Backend::reference, factory_of<ThinkPress>());

}  // namespace
}  // namespace kvsim::ref
