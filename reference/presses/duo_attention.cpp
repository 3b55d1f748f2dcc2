// duo_attention — kvpress DuoAttentionPress (arXiv 2410.10819): retrieval heads keep the whole
// cache, streaming heads only their first sink_size and last recent_size tokens. Which heads
// stream comes from the model's head scores [L, Hkv] and sink/recent sizes in an artefact file
// (traces/ARTEFACTS.md; tools/convert_artefact.py converts DuoAttention's published
// full_attention_heads.tsv and config.json): the round(L Hkv head_compression_ratio) lowest.
// kvpress's on_the_fly_scoring (scores from BookSum samples through the model) is not
// replayable from a trace. --ratio does not apply.
#include "reference/artefacts.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class DuoAttentionPress final : public Press {
 public:
  explicit DuoAttentionPress(const PressConfig& c)
      : pattern_(load_duo_attention(c.params.get_path("artefact"), c.params.get("head_compression_ratio"))) {}
  Compression compress(const PressInput& in, double) const override { return pattern_.compress(in); }

 private:
  DuoAttentionPattern pattern_;
};

const Registrar registered({.name = "duo_attention",
                            .summary = "streaming heads keep sinks + recent tokens, retrieval heads everything (arXiv 2410.10819)",
                            .params = {{"artefact", ParamType::Path, {}, {}, {}, "head scores [L, Hkv] with sink_size, recent_size (traces/ARTEFACTS.md)"},
                                       {"head_compression_ratio", ParamType::Float, 0.0, 0.0, 1.0, "share of heads that stream"}},
                            .uses_ratio = false,
                            .needs = {"artefact"},
                            .test_artefact = write_test_duo_attention},
                           Backend::reference, factory_of<DuoAttentionPress>());

}  // namespace
}  // namespace kvsim::ref
