#include "reference/trace_check.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>
#include <vector>

#include "core/error.h"

namespace kvsim::ref {

double attn_out_tolerance(StorageDtype dtype) {
  switch (dtype) {
    case StorageDtype::float32: return 1e-3;
    case StorageDtype::float16: return 2e-2;
    case StorageDtype::bfloat16: return 8e-2;
  }
  return 0;
}

void check_recorded_outputs(const TraceReader& trace, const LayerTensors& layer) {
  const TraceInfo& info = trace.info();
  const int l = layer.layer_index;
  if (!trace.has_dataset(l, "attn_out")) return;
  const int H = info.num_attention_heads, G = H / info.num_key_value_heads, T = info.total_tokens(), d = info.head_dim;
  const double tolerance = attn_out_tolerance(info.dtype);
  const std::set<int> heads = {0, H / 2, H - 1}, tokens = {0, T / 2, info.n_context - 1, T - 1};
  for (int h : heads) {
    const HeadTensor recorded = trace.read_heads(l, "attn_out", h, 1, T);
    const int g = h / G;
    const int window = info.sliding_window(l);
    for (int t : tokens) {  // softmax(q_t . k_j / sqrt d) over first <= j <= t (a sliding window: t - j < W), in double
      const int first = window > 0 ? std::max(0, t - window + 1) : 0;
      std::vector<double> logits(static_cast<std::size_t>(t) + 1, -std::numeric_limits<double>::infinity());
      for (int j = first; j <= t; ++j) {
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += static_cast<double>(layer.q.at(h, t, c)) * layer.k.at(g, j, c);
        logits[j] = dot / std::sqrt(static_cast<double>(d));
      }
      const double best = *std::max_element(logits.begin(), logits.end());
      double sum = 0;
      for (double& x : logits) sum += (x = std::exp(x - best));
      std::vector<double> mine(static_cast<std::size_t>(d), 0.0);
      for (int c = 0; c < d; ++c)
        for (int j = first; j <= t; ++j) mine[c] += logits[j] / sum * layer.v.at(g, j, c);
      const double err = token_relative_error(mine.data(), recorded.head(0) + static_cast<std::size_t>(t) * d, d);
      if (err > tolerance) {
        char what[200];
        std::snprintf(what, sizeof what, "layer %d head %d token %d: recorded attention output is %.2e off softmax(QK^T/sqrt d)V (tolerance %.0e)",
                      l, h, t, err, tolerance);
        throw Error("trace " + trace.path() + ": " + what +
                    ": damaged or mis-recorded (kvsim verify-trace checks every output; --no-check-trace skips this check)");
      }
    }
  }
}

}  // namespace kvsim::ref
