// libFuzzer target for the trace reader: the input bytes are a trace file; opening it and
// reading every recorded layer must end in success or a kvsim::Error, never a crash, a hang
// or an allocation the file cannot justify. Built with clang (-DKVSIM_FUZZ=ON, see
// tests/fuzz/run.sh), seeded with tests/fuzz/corpus and tests/fuzz/trace.dict.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "traces/trace.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/kvsim_fuzz_" + std::to_string(::getpid()) + ".h5";
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  } else {
    return 0;
  }
  try {
    const kvsim::TraceReader trace(path);
    for (int layer : trace.info().recorded_layers) trace.read_layer(layer, {.hidden_states = true});  // every optional part
  } catch (const kvsim::Error&) {
    // a clean, one-line refusal: what damaged input must give
  }
  std::remove(path.c_str());  // fork mode starts many processes: leave none of their files behind
  return 0;
}
