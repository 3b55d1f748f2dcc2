// decoding(<scorer>) and compression_ratio_decoding(<scorer>) — kvpress DecodingPress and
// CompressionRatioDecodingPress (kvpress/presses/decoding_press.py, compression_ratio_decoding_press.py): periodic re-compression of the
// whole cache during generation, replayed step by step by the replay engine (core/decoding.h).
// Defaults: compression_interval=512, target_size=2048 / target_compression_ratio=0.5.
#include "core/decoding.h"

namespace kvsim::ref {
namespace {

const Registrar decoding({.name = "decoding",
                          .summary = "re-compress the whole cache to target_size every compression_interval decode steps (kvpress DecodingPress)",
                          .params = {{"compression_interval", ParamType::Int, 512.0, 1.0, {}, "decode steps between compressions"},
                                     {"target_size", ParamType::Int, 2048.0, 1.0, {}, "cache size after each compression"}},
                          .wraps_scorer = true,
                          .uses_ratio = false,
                          .decoding = true,
                          .example = "decoding(knorm):target_size=1024,compression_interval=16"},
                         Backend::reference, decoding_factory(false));
const Registrar ratio({.name = "compression_ratio_decoding",
                       .summary = "re-compress to a fraction of the tokens seen every compression_interval steps (kvpress CompressionRatioDecodingPress)",
                       .params = {{"target_compression_ratio", ParamType::Float, 0.5, 0.0, 0.999999, "fraction of the tokens seen removed"},
                                  {"compression_interval", ParamType::Int, 512.0, 1.0, {}, "decode steps between compressions"}},
                       .wraps_scorer = true,
                       .uses_ratio = false,
                       .decoding = true,
                       .example = "compression_ratio_decoding(knorm):compression_interval=16"},
                      Backend::reference, decoding_factory(true));

}  // namespace
}  // namespace kvsim::ref

namespace kvsim::ref {
namespace {

// cam(<scorer>) — kvpress CAMPress (CaM, ICML 2024): see core/decoding.h. Defaults:
// compression_interval=512, target_size=2048, merge_budget=32; seed=0 keys the Bernoulli draws.
const Registrar cam({.name = "cam",
                     .summary = "merge evicted tokens into the next kept ones with CaM's Bernoulli rule during decoding (kvpress CAMPress)",
                     .params = {{"compression_interval", ParamType::Int, 512.0, 1.0, {}, "decode steps between compressions"},
                                {"target_size", ParamType::Int, 2048.0, 1.0, {}, "cache size after each compression"},
                                {"merge_budget", ParamType::Int, 32.0, 1.0, {}, "kept tokens after an evicted one that share its value"},
                                {"seed", ParamType::Int, 0.0, 0.0, 4294967295.0, "Philox seed of the Bernoulli draws"}},
                     .wraps_scorer = true,
                     .uses_ratio = false,
                     .decoding = true,
                     .example = "cam(knorm):target_size=1024,compression_interval=16"},
                    Backend::reference, cam_factory());

}  // namespace
}  // namespace kvsim::ref

namespace kvsim::ref {
namespace {

// prefill_decoding(<prefill press>;<decoding press>) — kvpress PrefillDecodingPress: the first
// press compresses the context at prefill (at --ratio), the second then runs its schedule
// during generation on what is left. kvsim keeps the prefill survivors in position order
// (what the algorithms intend); score_ordered_cache=1 keeps them in the prefill scorer's
// order, as kvpress's ScorerPress leaves its cache (torch.topk order), where CAMPress then
// reads cache index as sequence order — to reproduce published kvpress runs.
const Registrar prefill_decoding({.name = "prefill_decoding",
                                  .summary = "a prefill press, then a decoding press during generation (kvpress PrefillDecodingPress)",
                                  .params = {{"score_ordered_cache", ParamType::Bool, 0.0, {}, {},
                                              "keep the prefill survivors in score order, as kvpress does (needs a scorer prefill press)"}},
                                  .wraps_pair = true,
                                  .example = "prefill_decoding(snapkv;decoding(knorm):target_size=512,compression_interval=16)"},
                                 Backend::reference, prefill_decoding_factory());

}  // namespace
}  // namespace kvsim::ref
