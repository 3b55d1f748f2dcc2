#pragma once
// The CUDA backend's press machinery, written once for both executors (CudaExec on a GPU,
// HostExec for the cuda-emu backend): the layer on the device, the selection stages, and
// DeviceScorer, the base of every device scorer press.
//
// Selection is a radix select of each row's threshold (ties: the lower position is kept,
// the rule of the reference, reference/select.h) and stays on the device: only the kept
// positions come back to the host.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hd.h"
#include "core/model_wide.h"
#include "core/registry.h"
#include "cuda/device_tensor.h"
#include "cuda/primitives.h"

namespace kvsim::cuda {

// The first n tokens of a layer on the device, [heads, n, d] each, in their storage dtype
// (device_tensor.h); their hidden states [n, D], float32, when the host layer carries them
// (D = 0 and no buffer otherwise).
template <typename Exec>
struct DeviceLayer : ResidentLayer {
  using FloatBuffer = typename Exec::template Buffer<float>;
  DeviceTensor<Exec> q, k, v;
  FloatBuffer hidden;
  typename Exec::template Buffer<double> inv_freq;
  int H = 0, Hkv = 0, n = 0, d = 0, D = 0, layer = 0, num_layers = 1;
  double attention_scaling = 1.0;
  const LayerTensors* source = nullptr;  // the host tensors this copies
  const RopeConfig* rope = nullptr;       // the input's, for presses that compute rotations on the host
  int question_tokens = 0;                // PressInput::question_tokens

  explicit DeviceLayer(const PressInput& in)
      : q(in.layer.q, in.n),
        k(in.layer.k, in.n),
        v(in.layer.v, in.n),
        hidden(hidden_values(in)),
        inv_freq(in.rope.inv_freq.size()),
        H(in.num_heads()), Hkv(in.num_kv_heads()), n(in.n), d(in.head_dim()), D(hidden_values(in) ? in.layer.hidden_size : 0),
        layer(in.layer_index()), num_layers(in.num_layers), attention_scaling(in.rope.attention_scaling),
        source(&in.layer), rope(&in.rope), question_tokens(in.question_tokens) {
    if (!in.rope.inv_freq.empty()) inv_freq.upload(in.rope.inv_freq.data(), in.rope.inv_freq.size());
    if (D) hidden.upload(in.layer.hidden_states.data(), hidden.size());
  }

  // Tokens [Hkv, count] of `from` gathered on the device, per KV head (its query heads take
  // the same), as a layer of their own: what a wrapper hands its inner press (sub_input),
  // without hidden states. `source` stays from's host layer, whose per-token tensors are not
  // this layer's: the wrappers refuse inner presses that read them.
  DeviceLayer(Exec& exec, const DeviceLayer& from, const int* tokens, int count)
      : q(from.q.gathered(exec, tokens, count, from.H / from.Hkv)),
        k(from.k.gathered(exec, tokens, count, 1)),
        v(from.v.gathered(exec, tokens, count, 1)),
        inv_freq(from.inv_freq.size()),
        H(from.H), Hkv(from.Hkv), n(count), d(from.d), layer(from.layer), num_layers(from.num_layers),
        attention_scaling(from.attention_scaling), source(from.source), rope(from.rope) {
    widen_on_device(exec, from.inv_freq.data(), inv_freq.data(), inv_freq.size());  // a device copy: no host transfer per block
  }

 private:
  // n * D when the layer carries hidden states of at least n tokens, else 0 (nothing uploaded;
  // the presses that need them say so: require_hidden_states).
  static std::size_t hidden_values(const PressInput& in) {
    const std::size_t width = static_cast<std::size_t>(std::max(in.layer.hidden_size, 0));
    const std::size_t values = width * static_cast<std::size_t>(in.n);
    return width && in.layer.hidden_states.size() >= values ? values : 0;
  }
};

// The layer on the device: the resident copy the input carries when it is this executor's
// copy of the same tensors and length, else a fresh upload.
template <typename Exec>
class LayerOnDevice {
 public:
  explicit LayerOnDevice(const PressInput& in) {
    const auto* resident = dynamic_cast<const DeviceLayer<Exec>*>(in.resident);
    layer_ = resident && resident->source == &in.layer && resident->n == in.n ? resident : &owned_.emplace(in);
  }
  const DeviceLayer<Exec>& operator*() const { return *layer_; }

 private:
  std::optional<DeviceLayer<Exec>> owned_;
  const DeviceLayer<Exec>* layer_ = nullptr;
};

// A host float array (artefact weights) on the device as float64, for float64 products.
template <typename Exec>
typename Exec::template Buffer<double> upload_widened(const float* host, std::size_t count) {
  const std::vector<double> wide(host, host + count);
  typename Exec::template Buffer<double> out(count);
  if (count) out.upload(wide.data(), count);
  return out;
}

// A device float array widened to float64 on the device.
template <typename Exec>
typename Exec::template Buffer<double> widened_on_device(Exec& exec, const float* values, std::size_t count) {
  typename Exec::template Buffer<double> out(count);
  widen_on_device(exec, values, out.data(), count);
  return out;
}

// Copies device scores [rows, cols] to a host ScoreMatrix.
template <typename Exec>
ScoreMatrix download_scores(const typename Exec::template Buffer<float>& scores, int rows, int cols) {
  ScoreMatrix out(rows, cols);
  scores.download(out.data(), static_cast<std::size_t>(rows) * cols);
  return out;
}

// The NaN check of scores, launched on the device: its flag is read by throw_if_nan once the
// work that follows is enqueued, so the check adds no host round trip to the middle of a step.
template <typename Exec>
typename Exec::template Buffer<int> launch_nan_check(Exec& exec, const float* scores, long count) {
  typename Exec::template Buffer<int> flag_buffer(1);
  int* flag = flag_buffer.data();
  exec.for_each(1, [=] KVSIM_HD(long) { *flag = 0; });
  exec.for_each(count, [=] KVSIM_HD(long i) {
    if (scores[i] != scores[i]) *flag = 1;  // every writer writes the same value
  });
  return flag_buffer;
}

// Throws naming the first NaN score where launch_nan_check found one; the scores come to the
// host only then, to say where.
template <typename Exec>
void throw_if_nan(Exec& exec, const typename Exec::template Buffer<int>& flag, const float* scores, int rows, int cols,
                  const std::string& press) {
  int found = 0;
  flag.download(&found, 1);
  if (!found) return;
  std::vector<float> host(static_cast<std::size_t>(rows) * cols);
  exec.download(scores, host.data(), host.size());
  for (std::size_t i = 0; i < host.size(); ++i)
    if (std::isnan(host[i]))
      throw Error("press '" + press + "' produced a NaN score (head " + std::to_string(i / cols) + ", token " +
                  std::to_string(i % cols) + ")");
  throw Error("press '" + press + "' produced a NaN score");  // since overwritten where the check found it
}

// A scorer's scores [rows, cols] on the device with their NaN check launched but not yet read:
// the caller reads it (throw_if_nan) once it has enqueued its work on them, so the check costs
// no host round trip in the middle of that work.
template <typename Exec>
class CheckedScores {
 public:
  CheckedScores(Exec& exec, typename Exec::template Buffer<float> values, int rows, int cols, std::string press)
      : values_(std::move(values)),
        nan_flag_(launch_nan_check(exec, values_.data(), static_cast<long>(rows) * cols)),
        rows_(rows),
        cols_(cols),
        press_(std::move(press)) {}

  float* data() { return values_.data(); }
  const float* data() const { return values_.data(); }
  const typename Exec::template Buffer<float>& buffer() const { return values_; }
  // Throws the reference's error naming the first NaN score, if there is one.
  void throw_if_nan(Exec& exec) const { cuda::throw_if_nan(exec, nan_flag_, values_.data(), rows_, cols_, press_); }

 private:
  typename Exec::template Buffer<float> values_;
  typename Exec::template Buffer<int> nan_flag_;
  int rows_, cols_;
  std::string press_;
};

// Sorts each of `segments` rows of `length` scores descending, stably (equal scores keep
// the lower position first), returning the sorted positions within the row. One radix sort
// over (row, score) keys: rows stay in order, and every row is sorted by the whole device.
template <typename Exec>
typename Exec::template Buffer<int> sorted_positions(Exec& exec, const float* scores, int segments, long length) {
  const long count = segments * length;
  typename Exec::template Buffer<uint64_t> keys(count), sorted_keys(count);
  typename Exec::template Buffer<int> positions(count), sorted(count);
  uint64_t* key = keys.data();
  int* position = positions.data();
  exec.for_each(count, [=] KVSIM_HD(long i) {
    key[i] = (static_cast<uint64_t>(segments - 1 - i / length) << 32) | ordered_bits(scores[i]);
    position[i] = static_cast<int>(i % length);
  });
  int end_bit = 32;
  while ((1L << (end_bit - 32)) < segments) ++end_bit;
  exec.radix_sort_descending(keys.data(), positions.data(), sorted_keys.data(), sorted.data(), count, end_bit);
  return sorted;
}

// Per row, the k-th largest ordered key (radix select, most significant digit first) and how
// many entries equal to it the top k takes: a row's top k are the keys above its threshold
// plus the first `ties` equal to it by position, the reference's tie rule (reference/select.h).
// Each pass (exec.radix_select_pass) counts the digits of the keys that match the prefix
// chosen so far and picks the digit where the count from the top reaches the entries still
// wanted. Each pass reads its own `wanted` row and writes the next (the last: `ties`), so no
// thread reads what another writes; 1 <= k <= n. One launch to clear, one per pass.
template <typename Exec>
void radix_select_thresholds(Exec& exec, const float* scores, int rows, long n, int k, uint32_t* threshold, int* ties) {
  constexpr int kDigits = 1 << kRadixBits;
  const long counts_size = static_cast<long>(kRadixPasses) * rows * kDigits, done_size = static_cast<long>(kRadixPasses) * rows;
  typename Exec::template Buffer<unsigned> count_buffer(static_cast<std::size_t>(counts_size + done_size));
  typename Exec::template Buffer<int> wanted_buffer(static_cast<std::size_t>(kRadixPasses) * rows);
  unsigned* counts = count_buffer.data();
  int* wanted = wanted_buffer.data();
  exec.for_each(counts_size + done_size, [=] KVSIM_HD(long i) {
    counts[i] = 0;
    if (i < rows) {
      threshold[i] = 0;
      wanted[i] = k;
    }
  });
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    const long row_offset = static_cast<long>(pass) * rows;
    const RadixSelectPass step{threshold, wanted + row_offset, pass + 1 < kRadixPasses ? wanted + row_offset + rows : ties,
                               counts + row_offset * kDigits, counts + counts_size + row_offset};
    exec.radix_select_pass(scores, rows, n, 32 - kRadixBits * (pass + 1), step);
  }
}

// The top `k` of each row, as positions ascending per row in [rows, k] on the device:
// radix select of each row's threshold, then one scan of packed marks — keys equal to the
// threshold in the high 32 bits, keys above it in the low — gives each entry the counts of
// both before it in its row, and the keys above plus the first `ties` equal are compacted in
// order. (The low half's total over all rows stays below 2^31: no carry into the high half.)
template <typename Exec>
typename Exec::template Buffer<int> select_topk_on_device(Exec& exec, const float* scores, int rows, int n, int k) {
  k = std::clamp(k, 0, n);
  const long count = static_cast<long>(rows) * n;
  typename Exec::template Buffer<int> kept_buffer(static_cast<std::size_t>(rows) * k);
  int* kept = kept_buffer.data();
  if (k == 0) return kept_buffer;
  if (k == n) {
    exec.for_each(count, [=] KVSIM_HD(long i) { kept[i] = static_cast<int>(i % n); });
    return kept_buffer;
  }
  if (count >= INT_MAX) throw Error("top-k over " + std::to_string(count) + " entries exceeds the device selection's int counts");
  typename Exec::template Buffer<uint32_t> threshold_buffer(rows);
  typename Exec::template Buffer<int> ties_buffer(rows);
  typename Exec::template Buffer<uint64_t> mark_buffer(count), before_buffer(count);
  uint32_t* threshold = threshold_buffer.data();
  int* ties = ties_buffer.data();
  uint64_t* mark = mark_buffer.data();
  uint64_t* before = before_buffer.data();
  radix_select_thresholds(exec, scores, rows, n, k, threshold, ties);
  constexpr uint64_t kTie = uint64_t{1} << 32;
  exec.for_each(count, [=] KVSIM_HD(long i) {
    const uint32_t key = ordered_bits(scores[i]), t = threshold[i / n];
    mark[i] = key > t ? 1 : key == t ? kTie : 0;
  });
  exec.exclusive_scan(mark, before, count);
  exec.for_each(count, [=] KVSIM_HD(long i) {
    const long r = i / n;
    const uint64_t in_row = before[i] - before[r * n];
    const long ties_before = static_cast<long>(in_row >> 32), above_before = static_cast<long>(in_row & 0xffffffffu);
    const long taken_ties = ties_before < ties[r] ? ties_before : ties[r];
    if (mark[i] == 1 || (mark[i] == kTie && ties_before < ties[r])) kept[r * k + above_before + taken_ties] = static_cast<int>(i % n);
  });
  return kept_buffer;
}

// select_topk_on_device's result in one launch where each row's keys fit in one block's
// shared memory (Exec::topk_rows_in_shared: up to about 55K scores a row on an H100), else
// select_topk_on_device itself. Not yet the default: not yet run on a GPU; bench_cuda's
// select_shared and test_primitives_gpu compare it with the generic path and the reference.
template <typename Exec>
typename Exec::template Buffer<int> select_topk_shared_on_device(Exec& exec, const float* scores, int rows, int n, int k) {
  k = std::clamp(k, 0, n);
  typename Exec::template Buffer<int> kept;
  if (k > 0 && k < n && exec.topk_rows_in_shared(scores, rows, n, k, kept)) return kept;
  return select_topk_on_device(exec, scores, rows, n, k);
}

// The kept positions [rows, k] select_topk_on_device gives, on the host.
template <typename Exec>
Compression kept_on_host(const typename Exec::template Buffer<int>& kept, int rows, int k) {
  std::vector<int> host(kept.size());
  if (!host.empty()) kept.download(host.data(), host.size());
  Compression out;
  out.kept.resize(static_cast<std::size_t>(rows));
  for (int g = 0; g < rows; ++g) out.kept[g].assign(host.begin() + static_cast<long>(g) * k, host.begin() + static_cast<long>(g + 1) * k);
  return out;
}

// Top `k` per row, ascending positions.
// (before_download runs once the selection is enqueued: checked scores read their NaN check there.)
template <typename Exec>
Compression select_topk_per_head(Exec& exec, const float* scores, int rows, int n, int k,
                                 const std::function<void()>& before_download = [] {}) {
  k = std::clamp(k, 0, n);
  const auto kept = select_topk_on_device(exec, scores, rows, n, k);
  before_download();
  return kept_on_host<Exec>(kept, rows, k);
}

template <typename Exec>
Compression select_topk_per_head(Exec& exec, const CheckedScores<Exec>& scores, int rows, int n, int k) {
  return select_topk_per_head(exec, scores.data(), rows, n, k, [&] { scores.throw_if_nan(exec); });
}

// Top `total` entries of the flattened [rows, n] scores (ties: lower flat index).
template <typename Exec>
Compression select_topk_global(Exec& exec, const float* scores, int rows, int n, long total,
                               const std::function<void()>& before_download = [] {}) {
  const long count = static_cast<long>(rows) * n;
  total = std::clamp<long>(total, 0, count);
  if (count > INT_MAX) throw Error("global selection over " + std::to_string(count) + " entries exceeds the device's int positions");
  const auto kept = select_topk_on_device(exec, scores, 1, static_cast<int>(count), static_cast<int>(total));
  before_download();
  std::vector<int> flat(static_cast<std::size_t>(total));
  if (total) kept.download(flat.data(), flat.size());
  Compression out;
  out.kept.resize(static_cast<std::size_t>(rows));
  for (int f : flat) out.kept[static_cast<std::size_t>(f / n)].push_back(f % n);  // ascending already
  return out;
}

template <typename Exec>
Compression select_topk_global(Exec& exec, const CheckedScores<Exec>& scores, int rows, int n, long total) {
  return select_topk_global(exec, scores.data(), rows, n, total, [&] { scores.throw_if_nan(exec); });
}

// A chunk's kept positions part [rows, count] (within the chunk), placed as positions of the
// whole segment in their rows of kept [rows, k]: kept[g, offset + r] = first + part[g, r].
template <typename Exec>
void place_chunk(Exec& exec, const int* part, int rows, int count, int first, long offset, long k, int* kept) {
  exec.for_each(static_cast<long>(rows) * count, [=] KVSIM_HD(long i) { kept[i / count * k + offset + i % count] = first + part[i]; });
}

// The first counts[g] entries of each row g of `order` [rows, n] (each row a permutation of
// its positions, as sorted_positions gives), per row ascending: mark, scan, compact on the
// device, as select_topk_on_device, for budgets that differ between rows (head-wise presses).
template <typename Exec>
Compression first_of_each_order(Exec& exec, const int* order, int rows, int n, const std::vector<int>& counts) {
  const long count = static_cast<long>(rows) * n;
  long total = 0;
  for (int c : counts) total += std::clamp(c, 0, n);
  typename Exec::template Buffer<int> count_buffer(static_cast<std::size_t>(rows)), flag_buffer(count), index_buffer(count),
      kept_buffer(static_cast<std::size_t>(total));
  std::vector<int> clamped(counts.size());
  for (std::size_t g = 0; g < counts.size(); ++g) clamped[g] = std::clamp(counts[g], 0, n);
  if (rows) count_buffer.upload(clamped.data(), clamped.size());
  const int* first = count_buffer.data();
  int* flag = flag_buffer.data();
  int* index = index_buffer.data();
  int* kept = kept_buffer.data();
  exec.for_each(count, [=] KVSIM_HD(long i) { flag[i] = 0; });
  exec.for_each(count, [=] KVSIM_HD(long i) {
    const long g = i / n;
    if (i % n < first[g]) flag[g * n + order[i]] = 1;
  });
  exec.exclusive_scan(flag, index, count);
  exec.for_each(count, [=] KVSIM_HD(long i) {
    if (flag[i]) kept[index[i]] = static_cast<int>(i % n);
  });
  std::vector<int> host(static_cast<std::size_t>(total));
  if (total) kept_buffer.download(host.data(), host.size());
  Compression out;
  out.kept.resize(static_cast<std::size_t>(rows));
  long offset = 0;
  for (int g = 0; g < rows; ++g) {
    out.kept[g].assign(host.begin() + offset, host.begin() + offset + clamped[g]);
    offset += clamped[g];
  }
  return out;
}

// The kept keys and values [Hkv, k, d], each in its tensor's storage dtype (kvpress gathers
// the cache in the model's dtype): the compaction of a compress step.
template <typename Exec>
struct KeptCache {
  typename Exec::template Buffer<char> keys, values;
};

template <typename Exec>
KeptCache<Exec> gather_kept(Exec& exec, const DeviceLayer<Exec>& layer, const int* kept, int k) {
  const std::size_t values_per_tensor = static_cast<std::size_t>(layer.Hkv) * k * layer.d;
  KeptCache<Exec> cache{typename Exec::template Buffer<char>(values_per_tensor * layer.k.bytes_per_value()),
                        typename Exec::template Buffer<char>(values_per_tensor * layer.v.bytes_per_value())};
  for (auto [tensor, out] : {std::pair{&layer.k, cache.keys.data()}, {&layer.v, cache.values.data()}})
    with_storage(*tensor, [&, out = out](const auto* x) {
      using T = std::remove_cv_t<std::remove_pointer_t<decltype(x)>>;
      gather_rows(exec, x, layer.Hkv, layer.n, layer.d, kept, k, reinterpret_cast<T*>(out));
    });
  return cache;
}

// Host copies of a [heads, per_head] device array, one vector a head (as Compression holds
// new keys and values).
template <typename Buffer>
std::vector<std::vector<float>> download_heads(const Buffer& rows, int heads, std::size_t per_head) {
  std::vector<std::vector<float>> out;
  for (int g = 0; g < heads; ++g) {
    out.emplace_back(per_head);
    rows.download(out.back().data(), per_head, static_cast<std::size_t>(g) * per_head);
  }
  return out;
}

// The same from a device pointer.
template <typename Exec>
std::vector<std::vector<float>> download_heads(Exec& exec, const float* rows, int heads, std::size_t per_head) {
  std::vector<std::vector<float>> out;
  for (int g = 0; g < heads; ++g) {
    out.emplace_back(per_head);
    exec.download(rows + static_cast<std::size_t>(g) * per_head, out.back().data(), per_head);
  }
  return out;
}

// Every token kept with new keys and values (the quantisers): [Hkv, n, d] device arrays copied
// to the host per head, stored at `storage_fraction` of float16.
template <typename Exec>
Compression keep_all_with_new_entries(Exec& exec, const float* keys, const float* values, int Hkv, int n, int d,
                                      double storage_fraction) {
  Compression c = keep_all(Hkv, n);
  c.storage_fraction = storage_fraction;
  const std::size_t per_head = static_cast<std::size_t>(n) * d;
  c.keys = download_heads(exec, keys, Hkv, per_head);
  c.values = download_heads(exec, values, Hkv, per_head);
  return c;
}

// Base of the device scorer presses: subclasses write scores [Hkv, n] on the device;
// selection and the host-facing interface are shared.
template <typename Exec>
class DeviceScorer : public ScorerPress {
 public:
  using FloatBuffer = typename Exec::template Buffer<float>;
  explicit DeviceScorer(std::string name) : name_(std::move(name)) {}
  const std::string& name() const { return name_; }

  // Writes the scores of layer.n tokens per KV head into out [Hkv, n] (device memory).
  virtual void score_on_device(Exec& exec, const DeviceLayer<Exec>& layer, double ratio, float* out) const = 0;

  // The scores with their NaN check pending: call throw_if_nan on them once the work that
  // uses them is enqueued, and before any of its results are returned.
  CheckedScores<Exec> device_scores(Exec& exec, const DeviceLayer<Exec>& layer, double ratio) const {
    FloatBuffer scores(static_cast<std::size_t>(layer.Hkv) * layer.n);
    score_on_device(exec, layer, ratio, scores.data());
    return CheckedScores<Exec>(exec, std::move(scores), layer.Hkv, layer.n, name_);
  }

  ScoreMatrix score(const PressInput& input, double ratio) const override {
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    FloatBuffer scores(static_cast<std::size_t>(layer.Hkv) * layer.n);
    score_on_device(exec, layer, ratio, scores.data());
    return download_scores<Exec>(scores, layer.Hkv, layer.n);
  }

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    return select_by_scores(input, ratio);
  }

 protected:
  // Each head's budget(input, ratio) best tokens, at any ratio (presses with budgets of their
  // own, such as the kvcf_* ones, compress at ratio 0 too). The NaN check's flag is read once
  // the selection is enqueued (a selection of NaN scores is thrown away with them).
  Compression select_by_scores(const PressInput& input, double ratio) const {
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = device_scores(exec, layer, ratio);
    const int k = std::clamp(budget(input, ratio), 0, layer.n);
    const auto kept = select_topk_on_device(exec, scores.data(), layer.Hkv, layer.n, k);
    scores.throw_if_nan(exec);
    return kept_on_host<Exec>(kept, layer.Hkv, k);
  }

  // The layer's entries ranked over all heads together and its `pruned` lowest dropped
  // (layer-wide budgets: kvzip, fastkvzip).
  Compression select_across_heads(const PressInput& input, double ratio, long pruned) const {
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = device_scores(exec, layer, ratio);
    return select_topk_global(exec, scores, layer.Hkv, layer.n, static_cast<long>(layer.Hkv) * layer.n - pruned);
  }

  // A model-wide press's survey of one layer (core/model_wide.h): its NaN-checked scores, on the host.
  LayerSurvey survey_scores(const PressInput& input) const {
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = device_scores(exec, layer, 0.0);
    scores.throw_if_nan(exec);
    return {input.layer_index(), download_scores<Exec>(scores.buffer(), layer.Hkv, layer.n), {}};
  }

 private:
  std::string name_;
};

// The inner scorer of a wrapper spec, on the same backend.
template <typename Exec>
std::unique_ptr<DeviceScorer<Exec>> make_inner_device_scorer(const PressConfig& config) {
  std::unique_ptr<Press> inner = config.registry.make(*config.inner, config.backend);
  auto* scorer = dynamic_cast<DeviceScorer<Exec>*>(inner.get());
  if (!scorer) throw Error("press '" + config.info.name + "' needs a scorer press inside");
  inner.release();
  return std::unique_ptr<DeviceScorer<Exec>>(scorer);
}

}  // namespace kvsim::cuda
