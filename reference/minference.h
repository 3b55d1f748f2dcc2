#pragma once
// MInference (arXiv 2407.02490) as microsoft/MInference runs its prefill, shared by both
// backends: minference/modules/minference_forward.py (minference_prefill_kernel), the kernels'
// index conversion (csrc/vertical_slash_index.cu), ops/block_sparse_flash_attention.py and
// ops/streaming_kernel.py. Each query head of a layer has a pattern from a per-head config:
//
//   vertical_and_slash (v, s): v and s clamped to [30, n] and [50, n]. The last min(64, n)
//     queries' softmax over the keys (causal among themselves, logits / sqrt(d)) is summed per
//     key column (the verticals; the first 30 keys forced in) and per diagonal (the slashes:
//     offset o = query - key; offsets 0..99 forced in); the top v columns and top s diagonals
//     are kept. The kernel then attends, per block of 64 queries, to whole 64-wide key bands
//     covering the slashes (merged as csrc/vertical_slash_index.cu merges them) plus the
//     vertical columns outside those bands.
//   stream_llm (n_init, n_local): query p attends to keys j <= p with p - j < n_local or j < n_init.
//   block_sparse: per block of 64 queries, the top min(block_topk, n / 64) key blocks (64 wide,
//     causal) by the dot product of the blocks' mean query and mean key (zero-padded to 64).
//
// Scores are float64 on both backends (the same KVSIM_HD functions), so both pick the same
// keys; the selection from them is host code both call. Ties: the lower key position, block,
// or diagonal offset (the diagonal nearer the query) wins. A layer's sliding window (Gemma's
// local layers) is intersected with the pattern.
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hd.h"
#include "core/press.h"
#include "core/query_time.h"
#include "core/registry.h"
#include "traces/artefact.h"

namespace kvsim::ref {

inline constexpr int kMinferenceBlock = 64;            // the kernels' BLOCK_M = BLOCK_N
inline constexpr int kMinferenceLastQ = 64;            // queries that estimate vertical_and_slash
inline constexpr int kMinferenceForcedColumns = 30;    // keys always vertical
inline constexpr int kMinferenceForcedDiagonals = 100;  // offsets always slash

// The artefact's codes; dense is kvsim's, for layers below starting_layer.
enum class MinferencePattern { vertical_and_slash = 0, stream_llm = 1, block_sparse = 2, dense = 3 };

// One head's entry of MInference's config, [type, vertical_size, slash_size]: stream_llm reads
// the two sizes as (n_init, n_local); block_sparse ignores them.
struct MinferenceHead {
  MinferencePattern pattern = MinferencePattern::vertical_and_slash;
  int vertical_size = 1000, slash_size = 6096;
};

// ---------------------------------------------------------------------------------------------
// Per-head configs: the artefact (traces/ARTEFACTS.md), [L, H] per dataset.

struct MinferenceTable {
  std::string path;
  int layers = 0, heads = 0;
  std::vector<MinferenceHead> entries;  // [L, H]

  const MinferenceHead& at(int layer, int head, int num_heads) const {
    if (layer >= layers || heads != num_heads)
      throw Error("artefact " + path + ": patterns [" + std::to_string(layers) + "," + std::to_string(heads) + "] do not fit layer " +
                  std::to_string(layer) + " with " + std::to_string(num_heads) + " query heads");
    return entries[static_cast<std::size_t>(layer) * heads + head];
  }
};

inline MinferenceTable load_minference_table(const std::string& path) {
  const ArtefactTensor pattern = read_artefact_tensor(path, "pattern", 2), vertical = read_artefact_tensor(path, "vertical_size", 2),
                       slash = read_artefact_tensor(path, "slash_size", 2);
  for (const auto& [name, t] : {std::pair{"vertical_size", &vertical}, {"slash_size", &slash}})
    if (t->shape != pattern.shape)
      throw Error("artefact " + path + ": " + name + " " + shape_text(t->shape) + " is not the shape of pattern " + shape_text(pattern.shape));
  MinferenceTable table{path, static_cast<int>(pattern.shape[0]), static_cast<int>(pattern.shape[1]), {}};
  const auto whole = [&](const char* name, float x, float max) {
    if (!(x >= 0.0f && x <= max && x == std::floor(x)))
      throw Error("artefact " + path + ": " + name + " holds " + std::to_string(x) + ", not an integer in [0, " + std::to_string(static_cast<long>(max)) + "]");
    return static_cast<int>(x);
  };
  for (std::size_t i = 0; i < pattern.data.size(); ++i)
    table.entries.push_back({static_cast<MinferencePattern>(whole("pattern", pattern.data[i], 2.0f)), whole("vertical_size", vertical.data[i], 1e8f),
                             whole("slash_size", slash.data[i], 1e8f)});
  return table;
}

// A small random table of every pattern with sizes for short contexts, for tests and the
// conformance harness.
inline std::string write_test_minference(const std::string& path, const ArtefactShape& shape, unsigned seed) {
  std::mt19937 rng(seed);
  const std::size_t size = static_cast<std::size_t>(shape.num_layers) * shape.num_heads;
  ArtefactTensor pattern{{shape.num_layers, shape.num_heads}, std::vector<float>(size)}, vertical = pattern, slash = pattern;
  for (std::size_t i = 0; i < size; ++i) {
    pattern.data[i] = static_cast<float>(rng() % 3);
    vertical.data[i] = static_cast<float>(rng() % 200);
    slash.data[i] = static_cast<float>(1 + rng() % 400);
  }
  write_artefact(path, {{"pattern", pattern}, {"vertical_size", vertical}, {"slash_size", slash}}, {});
  return "artefact=" + path + ",block_topk=3";
}

// ---------------------------------------------------------------------------------------------
// Parameters, and each head's effective pattern.

struct MinferenceParams {
  std::string artefact;  // "" : every head runs `uniform`
  MinferenceHead uniform;
  int block_topk = 100;
  int starting_layer = 0;
  double minference_ratio = 1.0;
  int query_stride = 1;

  static MinferenceParams from(const PressConfig& c) {
    return {c.params.get_path("artefact"),
            {static_cast<MinferencePattern>(c.params.get_int("pattern")), c.params.get_int("vertical_size"), c.params.get_int("slash_size")},
            c.params.get_int("block_topk"),
            c.params.get_int("starting_layer"),
            c.params.get("minference_ratio"),
            c.params.get_int("query_stride")};
  }
};

inline std::vector<ParamDef> minference_params() {
  ParamDef artefact{"artefact", ParamType::Path, {}, {}, {}, "per-head patterns [L, H] (traces/ARTEFACTS.md); None: every head runs `pattern`"};
  artefact.nullable = true;
  ParamDef pattern{"pattern", ParamType::Choice, 0.0, {}, {}, "every head's pattern without an artefact"};
  pattern.choices = {"vertical_and_slash", "stream_llm", "block_sparse"};
  return {artefact,
          pattern,
          {"vertical_size", ParamType::Int, 1000.0, 0.0, 1e8, "verticals (stream_llm: n_init); MInference's default for a head missing from its config"},
          {"slash_size", ParamType::Int, 6096.0, 0.0, 1e8, "slashes (stream_llm: n_local); MInference's default for a head missing from its config"},
          {"block_topk", ParamType::Int, 100.0, 1.0, {}, "block_sparse: key blocks per query block (MInference's 100)"},
          {"starting_layer", ParamType::Int, 0.0, 0.0, {}, "layers below it attend densely (MInference's starting_layer)"},
          {"minference_ratio", ParamType::Float, 1.0, 0.0, {}, "scales every head's two sizes, int(size * ratio) (MInference's minference_ratio)"},
          {"query_stride", ParamType::Int, 1.0, 1.0, {}, "measure every s-th query of the segment, counted back from its last (kvsim: bounds the O(n^2) dense reference)"}};
}

// The pattern minference_prefill_kernel runs on query head h of a layer with n tokens:
// sizes scaled by minference_ratio, then vertical_and_slash's clamped.
inline MinferenceHead minference_head(const MinferenceParams& params, const MinferenceTable* table, int layer, int h, int num_heads, int n) {
  if (layer < params.starting_layer) return {MinferencePattern::dense, 0, 0};
  MinferenceHead head = table ? table->at(layer, h, num_heads) : params.uniform;
  // int(size * ratio), capped at 1e9 (longer than any segment) so that a large ratio cannot
  // overflow the cast.
  auto scaled = [&](int size) { return static_cast<int>(std::min(size * params.minference_ratio, 1e9)); };
  head.vertical_size = scaled(head.vertical_size);
  head.slash_size = scaled(head.slash_size);
  if (head.pattern == MinferencePattern::vertical_and_slash) {
    head.vertical_size = std::min(n, std::max(head.vertical_size, 30));
    head.slash_size = std::min(n, std::max(head.slash_size, 50));
  }
  return head;
}

// The segment's queries measured: every stride-th from the last one, ascending.
inline std::vector<int> minference_query_positions(int n, int stride) {
  std::vector<int> positions;
  for (int p = n - 1; p >= 0; p -= stride) positions.push_back(p);
  std::reverse(positions.begin(), positions.end());
  return positions;
}

// ---------------------------------------------------------------------------------------------
// Scores, float64, per query head (q: its [T, d] queries; k: its KV head's [T, d] keys).

inline int minference_last_q(int n) { return std::min(kMinferenceLastQ, n); }

// (X: float, or a 16-bit storage type read as float, cuda/device_tensor.h.)
template <typename X>
KVSIM_HD inline double minference_logit(const X* q, const X* k, int d) {
  double dot = 0.0;
  for (int c = 0; c < d; ++c) dot += static_cast<double>(static_cast<float>(q[c])) * static_cast<float>(k[c]);
  return dot / sqrt(static_cast<double>(d));
}

// Softmax statistics of estimation row r (query position n - last_q + r over keys [0, pos]).
template <typename X>
KVSIM_HD inline void minference_row_stats(const X* q, const X* k, int n, int d, int r, double* max_out, double* sum_out) {
  const int last_q = n < kMinferenceLastQ ? n : kMinferenceLastQ, pos = n - last_q + r;
  double best = -INFINITY, sum = 0.0;
  for (int j = 0; j <= pos; ++j) best = fmax(best, minference_logit(q + static_cast<long>(pos) * d, k + static_cast<long>(j) * d, d));
  for (int j = 0; j <= pos; ++j) sum += exp(minference_logit(q + static_cast<long>(pos) * d, k + static_cast<long>(j) * d, d) - best);
  *max_out = best;
  *sum_out = sum;
}

// Probability of estimation row r on key j (0 where causally masked).
template <typename X>
KVSIM_HD inline double minference_prob(const X* q, const X* k, int n, int d, const double* max, const double* sum, int r, int j) {
  const int last_q = n < kMinferenceLastQ ? n : kMinferenceLastQ, pos = n - last_q + r;
  if (j > pos || j < 0) return 0.0;
  return exp(minference_logit(q + static_cast<long>(pos) * d, k + static_cast<long>(j) * d, d) - max[r]) / sum[r];
}

// Column j's vertical score, and diagonal o's slash score (sum_all_diagonal_matrix's entry).
template <typename X>
KVSIM_HD inline double minference_vertical_score(const X* q, const X* k, int n, int d, const double* max, const double* sum, int j) {
  const int last_q = n < kMinferenceLastQ ? n : kMinferenceLastQ;
  double total = 0.0;
  for (int r = 0; r < last_q; ++r) total += minference_prob(q, k, n, d, max, sum, r, j);
  return total;
}
template <typename X>
KVSIM_HD inline double minference_slash_score(const X* q, const X* k, int n, int d, const double* max, const double* sum, int o) {
  const int last_q = n < kMinferenceLastQ ? n : kMinferenceLastQ;
  double total = 0.0;
  for (int r = 0; r < last_q; ++r) total += minference_prob(q, k, n, d, max, sum, r, n - last_q + r - o);
  return total;
}

// Blocks of the padded length (block_sparse_attention pads n to floor(n / 64) + 1 blocks).
inline int minference_padded_blocks(int n) { return n / kMinferenceBlock + 1; }

// Channel c of the mean of rows [64 b, 64 b + 64) of x ([n, d]), rows past n zero.
template <typename X>
KVSIM_HD inline double minference_block_mean(const X* x, int n, int d, int b, int c) {
  double total = 0.0;
  const int end = (b + 1) * kMinferenceBlock < n ? (b + 1) * kMinferenceBlock : n;
  for (int t = b * kMinferenceBlock; t < end; ++t) total += static_cast<float>(x[static_cast<long>(t) * d + c]);
  return total / kMinferenceBlock;
}

// The scores both backends compute for one layer: each array only where some head's pattern
// needs it (empty otherwise), filled for those heads.
struct MinferenceScores {
  std::vector<double> vertical, slash;  // [H, n]
  std::vector<double> blocks;           // [H, B, B], B = minference_padded_blocks(n): query block m . key block b
};

// ---------------------------------------------------------------------------------------------
// Masks: which keys each query attends to, in the kernels' own form.

// Per (query head, block of 64 queries): key ranges [start, end), attended causally, and single
// key columns (all before the block); per head a local window (stream_llm's n_local; 0: none)
// whose keys p - window < j <= p are attended whatever the rest says.
struct MinferenceMasks {
  int n = 0, heads = 0, blocks = 0;  // blocks = ceil(n / 64)
  std::vector<int> window;             // [heads]
  std::vector<int> range_offsets{0};   // [heads * blocks + 1], in pairs of `ranges`
  std::vector<int> ranges;             // start, end, start, end, ...
  std::vector<int> column_offsets{0};  // [heads * blocks + 1]
  std::vector<int> columns;

  void add_range(int start, int end) { ranges.insert(ranges.end(), {start, end}); }
  void close_block() {
    range_offsets.push_back(static_cast<int>(ranges.size() / 2));
    column_offsets.push_back(static_cast<int>(columns.size()));
  }
};

// Raw pointers to the masks (on the host or on a device).
struct MinferenceMaskView {
  int blocks = 0;
  const int *window = nullptr, *range_offsets = nullptr, *ranges = nullptr, *column_offsets = nullptr, *columns = nullptr;
};

inline MinferenceMaskView host_view(const MinferenceMasks& m) {
  return {m.blocks, m.window.data(), m.range_offsets.data(), m.ranges.data(), m.column_offsets.data(), m.columns.data()};
}

// The keys query position p of head h attends to, as disjoint intervals visit(start, end), within
// the layer's sliding window W > 0 (keys p - j < W) when it has one.
template <typename Visit>
KVSIM_HD void minference_row_keys(const MinferenceMaskView& m, int h, int p, int sliding_window, Visit&& visit) {
  const int at = h * m.blocks + p / kMinferenceBlock, window = m.window[h];
  const int local = window > 0 ? (p - window + 1 > 0 ? p - window + 1 : 0) : p + 1;  // the local window's first key
  const int seen = sliding_window > 0 && p - sliding_window + 1 > 0 ? p - sliding_window + 1 : 0;
  for (int r = m.range_offsets[at]; r < m.range_offsets[at + 1]; ++r) {
    int start = m.ranges[2 * r], end = m.ranges[2 * r + 1];
    start = start > seen ? start : seen;
    end = end < p + 1 ? end : p + 1;
    end = end < local ? end : local;
    if (start < end) visit(start, end);
  }
  for (int c = m.column_offsets[at]; c < m.column_offsets[at + 1]; ++c)
    if (m.columns[c] >= seen && m.columns[c] < local) visit(m.columns[c], m.columns[c] + 1);
  const int first = local > seen ? local : seen;
  if (first <= p) visit(first, p + 1);
}

// Indices of the top `count` of scores[0, size), the first `forced` indices counted as +inf;
// ties to the lower index.
inline std::vector<int> minference_top(const double* scores, int size, int forced, int count) {
  std::vector<int> order(static_cast<std::size_t>(size));
  std::iota(order.begin(), order.end(), 0);
  const auto key = [&](int i) { return i < forced ? INFINITY : scores[i]; };
  count = std::min(count, size);
  std::partial_sort(order.begin(), order.begin() + count, order.end(),
                    [&](int a, int b) { return key(a) > key(b) || (key(a) == key(b) && a < b); });
  order.resize(static_cast<std::size_t>(count));
  return order;
}

// csrc/vertical_slash_index.cu for one head: verticals ascending, slash offsets descending (the
// nearest diagonal, offset 0, is always among them: it is forced and wins its ties).
inline void minference_add_vertical_slash(MinferenceMasks& masks, const std::vector<int>& verticals, const std::vector<int>& offsets) {
  const int B = kMinferenceBlock;
  for (int block = 0; block < masks.blocks; ++block) {
    const int end_m = (block + 1) * B;
    std::size_t s = 0, v = 0;
    while (s < offsets.size() && offsets[s] >= end_m) ++s;
    if (s == offsets.size()) throw Error("internal: minference found no slash reaching query block " + std::to_string(block));
    int slash_end = std::max(end_m - offsets[s++], B);
    int range_start = slash_end - B, range_end = slash_end;
    int vertical = verticals.empty() ? end_m + B : verticals[v++];
    while (true) {
      if (vertical < range_end) {
        if (vertical < range_start) masks.columns.push_back(vertical);
        vertical = v < verticals.size() ? verticals[v++] : end_m + B;
      } else if (s < offsets.size()) {
        slash_end = std::max(end_m - offsets[s++], B);
        if (slash_end > range_end + B) {
          masks.add_range(range_start, range_end);
          range_start = slash_end - B;
          range_end = slash_end;
        } else if (slash_end > range_end) {
          range_end += B;
        }
      } else {
        masks.add_range(range_start, range_end);  // verticals past the last band are not attended (the kernel's loop ends)
        break;
      }
    }
    masks.close_block();
  }
}

// block_sparse for one head: per query block m, the top min(m + 1, topk) key blocks b <= m by
// block_scores[m * B + b].
inline void minference_add_block_sparse(MinferenceMasks& masks, const double* block_scores, int padded_blocks, int topk) {
  for (int m = 0; m < masks.blocks; ++m) {
    std::vector<int> chosen = minference_top(block_scores + static_cast<std::size_t>(m) * padded_blocks, m + 1, 0, topk);
    std::sort(chosen.begin(), chosen.end());
    for (int b : chosen) masks.add_range(b * kMinferenceBlock, (b + 1) * kMinferenceBlock);
    masks.close_block();
  }
}

// Every head's masks for a layer of n context tokens, from the scores of the heads that need them.
inline MinferenceMasks minference_masks(const std::vector<MinferenceHead>& heads, const MinferenceScores& scores, int n, int block_topk,
                                        const std::string& where) {
  MinferenceMasks masks;
  masks.n = n;
  masks.heads = static_cast<int>(heads.size());
  masks.blocks = (n + kMinferenceBlock - 1) / kMinferenceBlock;
  const int padded = minference_padded_blocks(n);
  for (std::size_t h = 0; h < heads.size(); ++h) {
    const MinferenceHead& head = heads[h];
    masks.window.push_back(head.pattern == MinferencePattern::stream_llm ? head.slash_size : 0);
    switch (head.pattern) {
      case MinferencePattern::dense:
        for (int b = 0; b < masks.blocks; ++b) {
          masks.add_range(0, n);
          masks.close_block();
        }
        break;
      case MinferencePattern::stream_llm:
        if (head.vertical_size == 0 && head.slash_size == 0) throw Error(where + ": head " + std::to_string(h) + "'s stream_llm pattern (0, 0) attends to nothing");
        for (int b = 0; b < masks.blocks; ++b) {
          if (head.vertical_size > 0) masks.add_range(0, head.vertical_size);
          masks.close_block();
        }
        break;
      case MinferencePattern::block_sparse: {
        const int topk = std::min(block_topk, n / kMinferenceBlock);
        if (topk == 0)
          throw Error(where + ": head " + std::to_string(h) + "'s block_sparse pattern needs at least 64 tokens (MInference attends to no block below that)");
        minference_add_block_sparse(masks, scores.blocks.data() + h * padded * padded, padded, topk);
        break;
      }
      case MinferencePattern::vertical_and_slash: {
        std::vector<int> verticals = minference_top(scores.vertical.data() + h * n, n, kMinferenceForcedColumns, head.vertical_size);
        std::vector<int> offsets = minference_top(scores.slash.data() + h * n, n, kMinferenceForcedDiagonals, head.slash_size);
        std::sort(verticals.begin(), verticals.end());
        std::sort(offsets.begin(), offsets.end(), std::greater<>());
        minference_add_vertical_slash(masks, verticals, offsets);
        break;
      }
    }
  }
  return masks;
}

// Per KV head: the mean over its query heads and the measured queries of attended / visible keys.
// A query left with no key (a pattern that misses the layer's sliding window) is an Error.
inline std::vector<double> minference_attended_fraction(const MinferenceMasks& masks, const std::vector<int>& positions, int kv_heads,
                                                        int sliding_window, const std::string& where) {
  const int H = masks.heads, G = H / kv_heads;
  std::vector<double> fraction(static_cast<std::size_t>(kv_heads), 0.0);
  const MinferenceMaskView view = host_view(masks);
  for (int h = 0; h < H; ++h)
    for (int p : positions) {
      long attended = 0;
      minference_row_keys(view, h, p, sliding_window, [&](int start, int end) { attended += end - start; });
      if (attended == 0) throw Error(where + ": query " + std::to_string(p) + " of head " + std::to_string(h) + " attends to no key under its pattern");
      const int visible = sliding_window > 0 ? std::min(p + 1, sliding_window) : p + 1;
      fraction[h / G] += static_cast<double>(attended) / visible;
    }
  for (double& f : fraction) f = positions.empty() ? 1.0 : f / (static_cast<double>(G) * positions.size());
  return fraction;
}

// Whether any head runs `pattern` (which scores a backend must compute).
inline bool minference_any(const std::vector<MinferenceHead>& heads, MinferencePattern pattern) {
  return std::any_of(heads.begin(), heads.end(), [&](const MinferenceHead& h) { return h.pattern == pattern; });
}

// One layer as both backends run it: scores(heads) computes the scores the heads need (a
// MinferenceScores), attend(masks, positions) the sparse outputs per query head.
template <typename Scores, typename Attend>
QueryTimeOutputs minference_outputs(const MinferenceParams& params, const MinferenceTable* table, const PressInput& in, Scores&& scores,
                                    Attend&& attend) {
  const int H = in.num_heads(), n = in.n;
  std::vector<MinferenceHead> heads;
  for (int h = 0; h < H; ++h) heads.push_back(minference_head(params, table, in.layer_index(), h, H, n));
  const std::string where = "minference, layer " + std::to_string(in.layer_index());
  const MinferenceMasks masks = minference_masks(heads, scores(heads), n, params.block_topk, where);
  QueryTimeOutputs result;
  result.query_positions = minference_query_positions(n, params.query_stride);
  result.attended_fraction = minference_attended_fraction(masks, result.query_positions, in.num_kv_heads(), in.sliding_window, where);
  result.heads = attend(masks, result.query_positions);
  return result;
}

}  // namespace kvsim::ref
