#pragma once
// The replay engine: for one layer at a time, every press compresses the segment it
// sees (the context; context + question in query-aware mode) and every later query
// (question, then generated tokens) attends to the compressed segment plus the
// uncompressed tokens after it, causally — as kvpress applies presses. The perturbation
// of each later query's attention output is measured against the full cache.
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/registry.h"
#include "core/stats.h"
#include "traces/trace.h"

namespace kvsim::ref {

struct ReplayOptions {
  std::vector<std::string> presses;  // press specs
  std::vector<double> ratios;        // kvpress compression ratios in [0, 1)
  std::vector<int> layers;           // recorded layers to replay; empty = all
  bool query_aware = false;          // the press also sees the question
  Backend backend = Backend::reference;
  bool check_trace = true;           // recompute a sample of recorded outputs first (reference/trace_check.h)
};

// Per-query metrics of one (layer, query head), and their summaries.
struct HeadResult {
  int layer = 0, head = 0;
  double kept_fraction = 0;  // kept / n for the head's KV head
  Summary rel_err, cosine, recall;
  // Traces with answer spans (reference/answer_metrics.h): the question's span attention kept
  // (NaN: none to keep, or a decoding press), and rel_err at question and answer positions.
  double span_retention = std::numeric_limits<double>::quiet_NaN();
  Summary answer_rel_err;
};

struct LayerResult {
  int layer = 0;
  double kept_fraction = 0;
  Summary rel_err, cosine, recall, oproj_rel_err;  // oproj_rel_err.count == 0 without o_proj
  Summary span_retention, answer_rel_err;           // over heads; count == 0 without answer spans
};

// One decoding step of a decoding press (the question is step 0 when present).
struct StepResult {
  int step = 0, first_position = 0, queries = 0;
  int cache_size = 0;             // tokens the step's queries attended to at most
  bool compressed_after = false;  // the cache was compressed after this step
  Summary rel_err;                // over layers, heads and the step's queries
};

struct RunResult {
  std::string press;  // the spec as given
  double ratio = 0;   // NaN for presses that ignore the ratio (dms, none, decoding)
  double achieved_ratio = 0;  // 1 - mean kept fraction (decoding: final cache / all tokens)
  Summary rel_err, cosine, recall, oproj_rel_err;
  Summary span_retention, answer_rel_err;  // over layers and heads; count == 0 without answer spans
  std::vector<LayerResult> layers;
  std::vector<HeadResult> heads;
  std::vector<StepResult> steps;  // decoding presses: per-step perturbation
  std::vector<int> skipped_layers;  // cross-layer presses: replayed layers whose predecessor is not recorded
  // Measured on the segment's own queries (a sparse prefill: MInference), not the evaluation queries.
  bool segment_queries = false;
};

struct ReplayResult {
  std::string trace;
  int n_compressed = 0;  // tokens each press sees
  int n_queries = 0;     // evaluation queries per layer and head
  bool answer_metrics = false;  // the trace has answer spans: runs carry span_retention and answer_rel_err
  int kv_heads = 0, head_dim = 0;  // the model's, for the cache's bytes per token (kv_bytes_per_token)
  double seconds = 0;            // wall time of the replay
  double read_seconds = 0;       // spent reading layers (on the reading thread, overlapped with work)
  double read_wait_seconds = 0;  // of which the replay waited for (not overlapped)
  std::vector<RunResult> runs;
};

// The compressed cache's bytes per token of one layer over `kv_heads` KV heads, metadata
// included: float16 keys and values (2 x 2 x head_dim bytes a head) at the achieved ratio, which
// already counts quantisers' storage (Compression::storage_fraction) and pruned key channels.
inline double kv_bytes_per_token(double achieved_ratio, int kv_heads, int head_dim) {
  return 4.0 * kv_heads * head_dim * (1.0 - achieved_ratio);
}

// Metrics of one query's compressed attention output against the full one.
struct QueryMetrics {
  double rel_err = 0, cosine = 1, recall = 1;
};
QueryMetrics compare_outputs(const float* full, const float* compressed, int dim, double lse_full, double lse_compressed);

// Reported after each replayed layer: which one, and how many of the replay's layers are done.
struct ReplayProgress {
  int layer = 0, done = 0, total = 0;
};

// What a replay of `presses` reads of each layer beyond q/k/v: o_proj always (whatever the
// trace holds), and hidden states and the extra passes only for the presses that use them.
LayerParts layer_parts_for(const std::vector<std::string>& presses);

// Validates options (press specs, ratios in [0, 1), layers recorded) before any work;
// kvsim::Error names the bad value. `progress` (optional) is called after every layer.
ReplayResult replay(const TraceReader& trace, const ReplayOptions& options,
                    const std::function<void(const ReplayProgress&)>& progress = {});

}  // namespace kvsim::ref
