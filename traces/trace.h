#pragma once
// Trace format v1 (see traces/FORMAT.md): HDF5 files holding, per recorded layer, the
// post-RoPE Q/K/V a model's attention consumed, optionally its per-head attention output,
// its input hidden states and its o_proj weight. The reader loads one layer at a time with
// hyperslab reads, converts the storage dtype to float32, and validates shapes, dtypes and
// finiteness; every problem is a kvsim::Error naming the file and the dataset.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/rope.h"
#include "core/tensor.h"

namespace kvsim {

constexpr int kTraceFormatVersion = 1;

enum class StorageDtype { float16, bfloat16, float32 };
std::string dtype_name(StorageDtype dtype);
StorageDtype parse_dtype(const std::string& name);  // "float16" | "bfloat16" | "float32"

struct TraceInfo {
  std::string model_name;
  int num_hidden_layers = 0;
  std::vector<int> recorded_layers;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;
  int hidden_size = 0;  // model hidden size D; 0 if unknown
  double rope_theta = 0;
  std::string rope_scaling;  // the model config's rope_scaling as JSON, "" if none
  RopeConfig rope;           // inv_freq (scaling applied) and attention_scaling
  StorageDtype dtype = StorageDtype::float16;
  int n_context = 0, n_question = 0, n_generated = 0;
  std::vector<int32_t> tokens;
  std::string text;  // optional
  bool checksummed = false;  // read: the tensors carry Fletcher32 checksums (traces written since they do)
  // Sliding-window layers (Gemma 2/3, Mistral): query p attends to keys j with p - j < W.
  // Layers absent from the map use full causal attention.
  std::map<int, int> sliding_windows;
  // Layers whose RoPE differs from `rope` (Gemma 3: sliding layers theta 1e4, full 1e6).
  std::map<int, RopeConfig> layer_ropes;
  // RULER-style suites (tools/ruler_suite.py): the context tokens [first, end) holding the facts
  // the question needs, the expected answers, and how the model's greedy answer scored.
  struct AnswerSpan {
    int first = 0, end = 0;
  };
  std::vector<AnswerSpan> answer_spans;  // empty: the trace has none
  std::string task;                      // e.g. "niah_single"; "" if not recorded
  std::string expected_answers;          // JSON list of strings; "" if not recorded
  int answer_tokens = -1;                // generated tokens up to the end of the answer; -1: all generated
  double answer_score = std::numeric_limits<double>::quiet_NaN();  // RULER string match in [0, 1]; NaN if not recorded

  bool has_answer_spans() const { return !answer_spans.empty(); }
  // Generated tokens that form the model's answer (all of them unless the recorder said otherwise).
  int answer_generated() const { return answer_tokens < 0 ? n_generated : answer_tokens; }
  // KVzip's context-reconstruction chunks (/kvzip_chunks), when the trace carries its extra
  // passes: they tile [chunks[0].context_begin, n_context); empty otherwise.
  std::vector<KvzipChunk> kvzip_chunks;

  int total_tokens() const { return n_context + n_question + n_generated; }
  bool records(int layer) const { return std::find(recorded_layers.begin(), recorded_layers.end(), layer) != recorded_layers.end(); }
  // Rows of a layer's KVzip passes: every chunk's repeat (0 without passes).
  int kvzip_repeat_tokens() const { return kvzip_chunks.empty() ? 0 : kvzip_chunks.back().repeat_begin + kvzip_chunks.back().repeat_length; }
  int sliding_window(int layer) const {
    const auto it = sliding_windows.find(layer);
    return it == sliding_windows.end() ? 0 : it->second;
  }
  const RopeConfig& rope_of(int layer) const {
    const auto it = layer_ropes.find(layer);
    return it == layer_ropes.end() ? rope : it->second;
  }
  int group_size() const { return num_attention_heads / num_key_value_heads; }
};

// What read_layer loads beyond q/k/v. Hidden states are large ([T, D]) and read by few
// presses: only on request.
struct LayerParts {
  bool attn_out = true;
  bool o_proj = true;
  bool hidden_states = false;
  bool kvzip = false;  // KVzip's extra passes (kvzip_q, kvzip_k, kvzip_hidden_norm), when recorded
  bool kvcompose = false;  // KVCompose's second pass over the context (kvcompose_q, kvcompose_k), when recorded
};

class TraceReader {
 public:
  explicit TraceReader(const std::string& path);
  ~TraceReader();
  TraceReader(const TraceReader&) = delete;
  TraceReader& operator=(const TraceReader&) = delete;

  const std::string& path() const { return path_; }
  const TraceInfo& info() const { return info_; }
  bool has_dataset(int layer, const std::string& name) const;  // e.g. "attn_out"
  // Refuses, naming the trace and its recorded layers, any of `layers` it does not record.
  void require_recorded(const std::vector<int>& layers) const;

  // Loads a recorded layer (float32). attn_out / o_proj / hidden_states are left empty when
  // the trace lacks them or `parts` skips them. `recycled`: a layer the caller is done with,
  // whose memory is reused where large enough (fresh memory costs a page fault per 4 KiB,
  // which measured slower than reading the file: a replay passes the layer it finished).
  LayerTensors read_layer(int layer, LayerParts parts = {}, LayerTensors recycled = {}) const;
  // Heads [head_begin, head_begin + head_count) and tokens [0, tokens) of one dataset
  // ("q", "k", "v" or "attn_out"): a hyperslab read, the cheap path for one head. `storage`:
  // memory to reuse, as for read_layer.
  HeadTensor read_heads(int layer, const std::string& name, int head_begin, int head_count, int tokens, HeadTensor storage = {}) const;

 private:
  // The constructor's steps, in order.
  void read_model_attributes();
  void read_recorded_layers();           // /recorded_layers
  void read_tokens();                    // /tokens
  void note_checksums();
  void read_rope_frequencies();          // /rope_inv_freq
  void read_text();                      // /text, when present
  void read_layer_attention(int layer);  // sliding window and RoPE of one recorded layer
  void read_answer();  // answer spans and attributes (RULER-style traces)
  void read_kvzip_chunks();              // /kvzip_chunks, when present
  KvzipPasses read_kvzip(int layer) const;
  KvcomposePass read_kvcompose(int layer) const;

  struct Impl;
  std::string path_;
  TraceInfo info_;
  std::unique_ptr<Impl> impl_;
};

// Writes to "<path>.partial" and renames to <path> in finish(); a writer destroyed
// before finish() removes the partial file, so no half-written trace is ever left.
class TraceWriter {
 public:
  // Metadata in HDF5 1.10's checksummed formats and a Fletcher32 checksum on every data
  // chunk, so that a damaged file is refused rather than read; `checksums` = false writes
  // plain chunks (the benchmark's baseline for their cost).
  TraceWriter(const std::string& path, const TraceInfo& info, bool checksums = true);
  ~TraceWriter();
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  // layer.layer_index must be in info.recorded_layers; q/k/v required, attn_out, o_proj and
  // hidden_states (which need info.hidden_size) written when non-empty.
  void write_layer(const LayerTensors& layer);
  void finish();

 private:
  void check_layer(const LayerTensors& layer) const;                                  // shapes against info_
  void write_header();  // root attributes and datasets
  void write_attention_tensors(const LayerTensors& layer, const std::string& group);  // q, k, v, attn_out, window, RoPE
  void write_layer_extras(const LayerTensors& layer, const std::string& group);       // o_proj, hidden states, extra passes

  struct Impl;
  std::string path_;
  TraceInfo info_;
  std::unique_ptr<Impl> impl_;
};

// True once HDF5 failed to write a trace this process was writing (a full disk). HDF5 1.10
// cannot close such a file: closing it again, or the library's own clean-up at exit, crashes
// (HDFGroup/hdf5#2291, fixed in 1.14). The writer abandons it, never closed; a program that
// sees this must end with std::_Exit, not exit or a return from main.
bool hdf5_file_abandoned();

}  // namespace kvsim
