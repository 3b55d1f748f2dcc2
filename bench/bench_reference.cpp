// Reference-backend benchmarks (Google Benchmark; run with --benchmark_format=json):
//  * press/<spec>/T=<n>/...: one press compressing a Llama-3-8B-shaped layer (32 query
//    heads, 8 KV heads, d=128, float32 in memory) of T = 4K ... 128K tokens, as far as the
//    press's cost allows on a CPU: scoring, selection and any merge.
//  * replay_layer/T=<n>: replay of one such layer from a float16 trace file (read,
//    full attention of the later queries, one press, compressed attention, metrics).
//  * read_layer/T=32768/...: TraceReader::read_layer of such a layer's q, k, v from a
//    checksummed bfloat16 or float16 trace, into fresh memory or into the last read's.
//  * replay_bundled_trace: the whole bundled trace through every registered press at
//    four ratios; reports the process's peak resident memory.
//  * upload_layer/T=32768/...: the host side of putting such a bfloat16 layer's q, k and v on
//    a device, as `kvsim replay --backend cuda` does for every layer (cuda/device_tensor.h:
//    the values narrowed to their 16-bit storage on every core, then copied), here into the
//    CPU emulation's buffers.
// Every label ends in threads=<n>: the reference's threads (default: every core, or
// OMP_NUM_THREADS). The main presses at 4K (and expected_attention at 32K) and the 4K layer
// replay also run on one thread, for the speed-up; times are wall-clock.
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <cstdlib>
#include <filesystem>
#include <set>

#include "bench/bench_util.h"
#include "core/allocator.h"
#include "core/press_checks.h"
#include "core/registry.h"
#include "cuda/device_tensor.h"
#include "cuda/exec_host.h"
#include "reference/parallel.h"
#include "reference/replay.h"
#include "traces/trace.h"

namespace kvsim {
namespace {

using bench::kHeadDim;
using bench::kHeads;
using bench::kKvHeads;
using bench::llama_layer;

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// Runs the reference on `threads` threads for one benchmark; records the count.
struct BenchThreads {
  BenchThreads(benchmark::State& state, int threads) {
    ref::set_threads(threads);
    state.counters["threads"] = ref::threads();
  }
  ~BenchThreads() { ref::set_threads(0); }
};

void measure_press(benchmark::State& state, const std::string& spec, int T, double ratio, int threads) {
  const BenchThreads use(state, threads);
  // (layer, the one before) for the current T only: benchmarks run T by T, and a 128K layer
  // pair takes about 6 GB.
  static std::map<int, std::pair<LayerTensors, LayerTensors>> layers;
  if (!layers.count(T)) {
    layers.clear();
    layers.emplace(T, std::pair{llama_layer(T), llama_layer(T, 4321)});
  }
  const auto& [layer, previous] = layers.at(T);
  const RopeConfig rope = RopeConfig::from_theta(500000.0, kHeadDim);
  const auto press = Registry::instance().make(spec, Backend::reference);
  const PressInput input{layer, T, 32, rope, &previous};
  std::size_t kept = 0;
  for (auto _ : state) {
    const Compression c = press->compress(input, ratio);
    kept = c.total_kept();
    benchmark::DoNotOptimize(kept);
  }
  // Bytes of the layer's cache the press reads (keys and values, float32) per iteration.
  const double cache_bytes = 2.0 * kKvHeads * T * kHeadDim * sizeof(float);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * cache_bytes));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * T);  // tokens
  state.counters["kept_fraction"] = static_cast<double>(kept) / (static_cast<double>(T) * kKvHeads);
}

// A one-layer trace (float16 unless told) of a Llama-3-8B-shaped layer of T tokens in the temp dir.
std::string write_bench_trace(int T, bool checksums, StorageDtype dtype = StorageDtype::float16) {
  const int n_context = T - 128;
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("kvsim_bench_layer_" + std::to_string(T) + "_" + dtype_name(dtype) + (checksums ? "" : "_plain") + ".h5")).string();
  TraceInfo info;
  info.model_name = "bench (Llama-3-8B-shaped)";
  info.num_hidden_layers = 32;
  info.recorded_layers = {0};
  info.num_attention_heads = kHeads;
  info.num_key_value_heads = kKvHeads;
  info.head_dim = kHeadDim;
  info.rope_theta = 500000.0;
  info.rope = RopeConfig::from_theta(500000.0, kHeadDim);
  info.dtype = dtype;
  info.n_context = n_context;
  info.n_question = 64;
  info.n_generated = 64;
  info.tokens.assign(static_cast<std::size_t>(T), 0);
  TraceWriter writer(path, info, checksums);
  writer.write_layer(llama_layer(T));
  writer.finish();
  return path;
}

// Reading one layer (q, k, v) with and without the Fletcher32 checksums: their cost.
void trace_read_benchmark(benchmark::State& state, int T, bool checksums) {
  const std::string path = write_bench_trace(T, checksums);
  {
    const TraceReader trace(path);
    for (auto _ : state) {
      const LayerTensors layer = trace.read_layer(0, {.attn_out = false, .o_proj = false});
      benchmark::DoNotOptimize(layer.k.data.data());
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * (kHeads + 2.0 * kKvHeads) * T * kHeadDim * 2));
  std::filesystem::remove(path);
}

// read_layer of q, k and v from a checksummed trace (warm page cache: the file was just
// written), into fresh memory or, as the replay does, into the memory of the layer read
// before (`recycle`). Bytes = the file's; f32_bytes_per_second = the output's.
void read_layer_benchmark(benchmark::State& state, int T, StorageDtype dtype, bool recycle) {
  const std::string path = write_bench_trace(T, true, dtype);
  {
    const TraceReader trace(path);
    LayerTensors layer;
    for (auto _ : state) {
      layer = trace.read_layer(0, {.attn_out = false, .o_proj = false}, recycle ? std::move(layer) : LayerTensors{});
      benchmark::DoNotOptimize(layer.k.data.data());
    }
  }
  const double values = (kHeads + 2.0 * kKvHeads) * T * kHeadDim;
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * values * (dtype == StorageDtype::float32 ? 4 : 2)));
  state.counters["f32_bytes_per_second"] = benchmark::Counter(state.iterations() * values * sizeof(float), benchmark::Counter::kIsRate);
  std::filesystem::remove(path);
}

void replay_layer_benchmark(benchmark::State& state, int T, int threads) {
  const BenchThreads use(state, threads);
  const std::string path = write_bench_trace(T, true);
  const TraceReader trace(path);
  for (auto _ : state) {
    const ref::ReplayResult result = ref::replay(trace, {.presses = {"knorm"}, .ratios = {0.5}});
    benchmark::DoNotOptimize(result.runs.front().rel_err.mean);
  }
  // Bytes read from the trace per iteration (float16 q, k, v).
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * (kHeads + 2.0 * kKvHeads) * T * kHeadDim * 2));
  state.counters["peak_rss_MiB"] = peak_rss_mib();
  std::filesystem::remove(path);
}

void upload_layer_benchmark(benchmark::State& state, int T) {
  const LayerTensors layer = llama_layer(T, 1234, true);
  for (auto _ : state) {
    const cuda::DeviceTensor<cuda::HostExec> q(layer.q, T), k(layer.k, T), v(layer.v, T);
    if (q.storage() != cuda::Storage::bfloat16) state.SkipWithError("the layer was not narrowed to bfloat16");
    benchmark::DoNotOptimize(v.as<cuda::Bfloat16>());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * (kHeads + 2.0 * kKvHeads) * T * kHeadDim * sizeof(float)));
}

void bundled_trace_benchmark(benchmark::State& state) {
  const BenchThreads use(state, 0);
  const TraceReader trace(KVSIM_BUNDLED_TRACE);
  ref::ReplayOptions options;
  for (const PressInfo* info : Registry::instance().presses())  // artefact presses skipped, as in kvsim replay's default run
    if (runs_on_layers(*info, trace.info().recorded_layers, trace.info().recorded_layers) && !info->test_artefact)
      options.presses.push_back(info->example.empty() ? info->name : info->example);
  options.ratios = {0.1, 0.25, 0.5, 0.75};
  std::size_t runs = 0;
  for (auto _ : state) {
    const ref::ReplayResult result = ref::replay(trace, options);
    runs = result.runs.size();
  }
  state.counters["runs"] = static_cast<double>(runs);
  state.counters["peak_rss_MiB"] = peak_rss_mib();
}

}  // namespace
}  // namespace kvsim

int main(int argc, char** argv) {
  using namespace kvsim;
  keep_freed_memory_for_reuse();  // as kvsim does
  using bench::register_reporting_errors;
  // The largest T each press is timed at on this 2-core reference: O(T^2) presses (full
  // causal attention: PressInfo::quadratic; pairwise key similarities) and float64 covariance
  // stop early.
  auto max_tokens = [](const PressInfo& info) {
    if (info.quadratic) return 4096;
    if (info.name == "merging" || info.name == "pivot_merge" || info.name == "weighted_merge") return 16384;
    if (info.name == "expected_attention") return 32768;
    return 131072;
  };
  // Presses also timed on one thread (at 4K; expected_attention at 32K too), for the speed-up.
  auto single_threaded_too = [](const std::string& name, int T) {
    static const std::set<std::string> at_4k = {"knorm", "snapkv", "pyramidkv", "tova", "keydiff", "lagkv", "expected_attention", "observed_attention"};
    return (T == 4096 && at_4k.count(name)) || (T == 32768 && name == "expected_attention");
  };
  const int all = ref::threads();
  auto thread_counts = [all](bool one_too) { return one_too && all > 1 ? std::vector<int>{1, all} : std::vector<int>{all}; };
  for (int T : {4096, 16384, 32768, 131072})
    for (const PressInfo* info : Registry::instance().presses()) {
      if (info->decoding || info->wraps_pair || T > max_tokens(*info)) continue;  // decoding presses do nothing at prefill
      const std::string spec = info->example.empty() ? info->name : info->example;
      for (int threads : thread_counts(single_threaded_too(info->name, T))) {
        const std::string label = "press/" + spec + "/T=" + std::to_string(T) + "/hkv=8/d=128/r=0.5/f32/threads=" + std::to_string(threads);
        register_reporting_errors(label, [spec, T, threads](benchmark::State& s) { measure_press(s, spec, T, 0.5, threads); })
            ->Unit(benchmark::kMillisecond)
            ->MinTime(0.2)
            ->UseRealTime();
      }
    }
  for (int T : {4096, 16384})
    for (int threads : thread_counts(T == 4096))
      register_reporting_errors("replay_layer/T=" + std::to_string(T) + "/h=32/hkv=8/d=128/knorm/f16/threads=" + std::to_string(threads),
                                [T, threads](benchmark::State& s) { replay_layer_benchmark(s, T, threads); })
          ->Unit(benchmark::kMillisecond)
          ->Iterations(3)
          ->UseRealTime();
  for (const bool checksums : {false, true})
    register_reporting_errors("trace_read/T=16384/h=32/hkv=8/d=128/f16/checksums=" + std::to_string(checksums),
                              [checksums](benchmark::State& s) { trace_read_benchmark(s, 16384, checksums); })
        ->Unit(benchmark::kMillisecond)
        ->Iterations(5)
        ->UseRealTime();
  for (const StorageDtype dtype : {StorageDtype::bfloat16, StorageDtype::float16})
    for (const bool recycle : {false, true})
      register_reporting_errors("read_layer/T=32768/h=32/hkv=8/d=128/" + dtype_name(dtype) + (recycle ? "/recycled" : "/fresh"),
                                [dtype, recycle](benchmark::State& s) { read_layer_benchmark(s, 32768, dtype, recycle); })
          ->Unit(benchmark::kMillisecond)
          ->Iterations(5)
          ->UseRealTime();
  register_reporting_errors("upload_layer/T=32768/h=32/hkv=8/d=128/bf16/emulated", [](benchmark::State& s) { upload_layer_benchmark(s, 32768); })
      ->Unit(benchmark::kMillisecond)
      ->Iterations(5)
      ->UseRealTime();
  register_reporting_errors("replay_bundled_trace/every_press/4_ratios/threads=" + std::to_string(all), bundled_trace_benchmark)
      ->Unit(benchmark::kMillisecond)
      ->Iterations(2)
      ->UseRealTime();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (hdf5_file_abandoned()) std::_Exit(1);  // a benchmark's trace could not be written: HDF5's clean-up at exit would crash on it
  return 0;
}
