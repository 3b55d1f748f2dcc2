// CUDA backend benchmarks (Google Benchmark, CUDA-event timing; run on a GPU with
// --benchmark_format=json). For each device scorer press on a Llama-3-8B-shaped layer
// (32 query heads, 8 KV heads, d=128, bfloat16 values kept in bfloat16 on the device, as a
// model's cache is; cuda/device_tensor.h) of T = 4K, 32K and 128K tokens:
//  * cuda/<press>/compress/...: the whole compression step, as kvpress's ScorerPress.compress
//    does it (score, NaN check, per-head top-k, gather of the kept keys and values), all on
//    the device — compare with bench/torch_compression.py;
//  * cuda/<press>/score/...: the scoring alone;
//  * cuda/<press>/select/...: the per-head top-k of the scores (a radix select of each
//    head's threshold, then mark-and-scan compaction), positions left on the device;
//  * cuda/<press>/select_shared/...: the same in one launch, a block per head with its scores
//    in shared memory, where they fit (select_topk_shared_on_device; not yet the default);
//  * cuda/<press>/gather/...: compaction of the kept keys and values;
//  * cuda/upload/...: a layer made resident as the replay makes each layer (q, k and v
//    narrowed to bfloat16 on the host's cores into page-locked memory, then copied), wall time;
//  * cuda/host_to_device/{pinned,pageable}/...: the copy alone of a layer's q, k and v bytes
//    from page-locked and from ordinary host memory.
// Bytes counted are the layer's keys and values (bfloat16) for scoring and compression, the
// scores read once for selection, the kept rows read and written for the gather (bfloat16 to
// bfloat16, as kvpress gathers);
// share_of_copy_bw is that traffic per second over the device's copy bandwidth, measured at
// start-up with a 1 GiB device-to-device cudaMemcpy.
// Without a GPU the binary prints why and exits 0 with no benchmark run.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>

#include "bench/bench_util.h"
#include "core/registry.h"
#include "cuda/device.h"
#include "cuda/exec_cuda.cuh"
#include "cuda/stages.h"

namespace kvsim::cuda {
namespace {

using bench::kHeadDim;
using bench::kHeads;
using bench::kKvHeads;
using bench::llama_layer;
double g_copy_bandwidth = 0;  // bytes per second

double measure_copy_bandwidth() {
  const std::size_t bytes = std::size_t(1) << 30;
  CudaExec::Buffer<char> a(bytes), b(bytes);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaMemcpy(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice);  // warm-up
  cudaEventRecord(start);
  for (int i = 0; i < 5; ++i) cudaMemcpy(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice);
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 5.0 * 2.0 * bytes / (ms / 1e3);  // a copy reads and writes every byte
}

// Times `body` with CUDA events, flushing L2 (a 256 MiB write) before each iteration.
template <typename Body>
void time_on_device(benchmark::State& state, Body body) {
  static CudaExec::Buffer<char> flush(std::size_t(256) << 20);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (auto _ : state) {
    cudaMemset(flush.data(), 0, flush.size());
    cudaEventRecord(start);
    body();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms / 1e3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

enum class Stage { compress, score, select, select_shared, gather };

// The layer of T tokens on the host and on the device, made once and shared by every press's
// benchmarks (a 128K layer takes seconds to draw, narrow and upload).
struct BenchLayer {
  LayerTensors host;
  RopeConfig rope = RopeConfig::from_theta(500000.0, kHeadDim);
  PressInput input{host, host.k.tokens, 32, rope};
  DeviceLayer<CudaExec> device{input};
  explicit BenchLayer(int T) : host(llama_layer(T, 1234, true)) {}
};

const BenchLayer& bench_layer(int T) {
  static std::map<int, std::unique_ptr<BenchLayer>> layers;
  auto& layer = layers[T];
  if (!layer) layer = std::make_unique<BenchLayer>(T);
  return *layer;
}

// Bytes of the layer's q, k and v in bfloat16.
double layer_bytes(int T) { return 2.0 * T * kHeadDim * (kHeads + 2.0 * kKvHeads); }

void measure_upload(benchmark::State& state, int T) {
  const BenchLayer& layer = bench_layer(T);
  for (auto _ : state) {
    const DeviceLayer<CudaExec> resident(layer.input);
    check_cuda(cudaDeviceSynchronize(), "upload");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * layer_bytes(T)));
}

void measure_host_to_device(benchmark::State& state, int T, bool pinned) {
  const std::size_t bytes = static_cast<std::size_t>(layer_bytes(T));
  CudaExec::Buffer<char> device(bytes);
  std::unique_ptr<char[]> pageable;
  char* host = nullptr;
  if (pinned) check_cuda(cudaMallocHost(reinterpret_cast<void**>(&host), bytes), "cudaMallocHost");
  else host = (pageable = std::make_unique<char[]>(bytes)).get();  // zeroed: every page is touched
  for (auto _ : state) device.upload(host, bytes);
  if (pinned) cudaFreeHost(host);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * static_cast<double>(bytes)));
}

void measure_press(benchmark::State& state, const std::string& spec, int T, Stage stage) {
  const DeviceLayer<CudaExec>& layer = bench_layer(T).device;
  const auto press = Registry::instance().make(spec, Backend::cuda);
  const auto* scorer = dynamic_cast<const DeviceScorer<CudaExec>*>(press.get());
  CudaExec exec;
  CudaExec::Buffer<float> scores(static_cast<std::size_t>(kKvHeads) * T);
  const double ratio = 0.5;
  scorer->score_on_device(exec, layer, ratio, scores.data());
  double bytes;
  const int kept_count = kvpress_budget(T, ratio);
  const long kept_rows = static_cast<long>(kKvHeads) * kept_count;
  const double value_bytes = static_cast<double>(layer.k.bytes_per_value());  // 2: bfloat16
  if (stage == Stage::compress) {
    time_on_device(state, [&] {
      scorer->score_on_device(exec, layer, ratio, scores.data());
      const auto nan_flag = launch_nan_check(exec, scores.data(), static_cast<long>(kKvHeads) * T);
      const auto kept = select_topk_on_device(exec, scores.data(), kKvHeads, T, kept_count);
      gather_kept(exec, layer, kept.data(), kept_count);
      throw_if_nan(exec, nan_flag, scores.data(), kKvHeads, T, spec);
    });
    bytes = 2.0 * kKvHeads * T * kHeadDim * value_bytes;
  } else if (stage == Stage::select) {
    time_on_device(state, [&] { select_topk_on_device(exec, scores.data(), kKvHeads, T, kept_count); });
    bytes = static_cast<double>(kKvHeads) * T * 4.0;  // the scores, once
  } else if (stage == Stage::select_shared) {
    time_on_device(state, [&] { select_topk_shared_on_device(exec, scores.data(), kKvHeads, T, kept_count); });
    bytes = static_cast<double>(kKvHeads) * T * 4.0;
  } else if (stage == Stage::gather) {
    const auto kept = select_topk_on_device(exec, scores.data(), kKvHeads, T, kept_count);
    time_on_device(state, [&] { gather_kept(exec, layer, kept.data(), kept_count); });
    bytes = 2.0 * 2.0 * static_cast<double>(kept_rows) * kHeadDim * value_bytes;  // keys and values, read and written
  } else {
    time_on_device(state, [&] { scorer->score_on_device(exec, layer, ratio, scores.data()); });
    bytes = 2.0 * kKvHeads * T * kHeadDim * value_bytes;  // keys and values once
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  // (bytes / copy bandwidth) seconds of copying per iteration, over the measured time: a share.
  state.counters["share_of_copy_bw"] = benchmark::Counter(bytes / g_copy_bandwidth, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["copy_GBps"] = g_copy_bandwidth / 1e9;
}

}  // namespace
}  // namespace kvsim::cuda

int main(int argc, char** argv) {
  namespace kc = kvsim::cuda;
  const kc::DeviceStatus status = kc::device_status();
  if (status.count == 0) {
    std::printf("bench_cuda: no CUDA device (%s); nothing to measure\n", status.reason.c_str());
    return 0;
  }
  kc::g_copy_bandwidth = kc::measure_copy_bandwidth();
  std::printf("bench_cuda: %s, device-to-device copy %.1f GB/s\n", status.name.c_str(), kc::g_copy_bandwidth / 1e9);
  // Scorer presses that run on a bare synthetic layer: not those that need an artefact file or a
  // trace's extra passes (they would only report an error).
  const auto runs_on_a_bare_layer = [](const kvsim::PressInfo& info) {
    const auto needs = [&](const char* what) { return std::count(info.needs.begin(), info.needs.end(), what) > 0; };
    return !info.test_artefact && !needs("kvzip passes") && !needs("kvcompose pass");
  };
  for (const kvsim::PressInfo* info : kvsim::Registry::instance().presses()) {
    if (!info->is_scorer || !runs_on_a_bare_layer(*info)) continue;
    for (int T : {4096, 32768, 131072}) {
      if (info->quadratic && T > 32768) continue;  // O(T^2) scoring
      for (const auto& named : {std::pair{kc::Stage::compress, "compress"}, {kc::Stage::score, "score"}, {kc::Stage::select, "select"},
                                {kc::Stage::select_shared, "select_shared"}, {kc::Stage::gather, "gather"}}) {
        const kc::Stage stage = named.first;
        const std::string label = "cuda/" + info->name + "/" + named.second + "/T=" + std::to_string(T) + "/hkv=8/d=128/r=0.5/bf16";
        kvsim::bench::register_reporting_errors(label, [name = info->name, T, stage](benchmark::State& s) {
          kc::measure_press(s, name, T, stage);
        })->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(0.2);
      }
    }
  }
  for (int T : {32768, 131072}) {
    const std::string shape = "/T=" + std::to_string(T) + "/h=32/hkv=8/d=128/bf16";
    kvsim::bench::register_reporting_errors("cuda/upload" + shape, [T](benchmark::State& s) { kc::measure_upload(s, T); })
        ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.2);
    for (const bool pinned : {true, false})
      kvsim::bench::register_reporting_errors(std::string("cuda/host_to_device/") + (pinned ? "pinned" : "pageable") + shape,
                                              [T, pinned](benchmark::State& s) { kc::measure_host_to_device(s, T, pinned); })
          ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.2);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
