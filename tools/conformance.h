#pragma once
// The conformance harness (kvsim's test-backend-ops): runs a press on the reference and on
// another backend over the same inputs and compares, stage by stage:
//  * scores (scorer presses): |s_other - s_ref| <= score_rtol * |s_ref| + 1e-6 * max|s_ref|;
//  * kept sets, per KV head: equal, except tokens whose reference score lies within
//    boundary_rtol of the selection boundary of that head (the lowest kept or the highest
//    dropped reference score; for wrappers, the inner scorer's reference scores, or those the
//    press names as its selection's: core/selection_scores.h) — those
//    are counted and reported, any other difference is a violation;
//  * merged values (merging presses): |v_other - v_ref| <= value_rtol * |v_ref| + 1e-6 * max|v_ref|,
//    in heads where both kept the same tokens, except rows of tokens that pair up within
//    boundary_rtol in reference score (check_merged_rows);
//  * sparse attention outputs (query-time presses): per query, within output_rtol;
//  * errors: a press that rejects an input must do so on both backends.
// The first violation of a wrapper or list press also gives its token's score and rank under
// the first inner scorer on both backends (an inner near-tie shows there). A press whose
// selection jumps where no score boundary shows it (core/selection_scores.h,
// SelectsFromInnerScores: entropy_gated_chunkkv, critical, critical_adakv) is compared stage by
// stage instead: its inner scores within score_rtol, then its kept set (and a scorer's scores)
// against the reference's last stage run on the other backend's inner scores — exactly
// (check_staged_selection), or, where the press names the scores that stage selects by,
// within score_rtol and boundary_rtol of them.
#include <span>
#include <string>
#include <vector>

#include "core/registry.h"

namespace kvsim {

struct ConformanceInput {
  std::string label;  // e.g. "random n=300 d=128 H=8 Hkv=1 f16" or "trace layer 14"
  const LayerTensors* layer;
  int n;
  int num_layers;
  const RopeConfig* rope;
  const LayerTensors* previous = nullptr;  // layer - 1, for cross-layer presses
};

struct ConformanceTolerance {
  double score_rtol = 1e-4;
  double boundary_rtol = 1e-4;
  double value_rtol = 1e-5;  // merged values (float32)
  double statistic_atol = 1.0;  // model-wide surveys' statistics: a count on a threshold may move by one under rounding
  double output_rtol = 1e-4;  // query-time presses' sparse attention outputs, per query (float32)
};

struct PressConformance {
  std::string press;
  int cases = 0;
  double max_score_error = 0;     // in units of the score tolerance (<= 1 passes)
  long near_boundary_diffs = 0;   // tolerated kept-set differences
  long violations = 0;            // kept-set differences away from the boundary, score or error mismatches
  int refused = 0;                // cases both backends refused with the same error (nothing else compared)
  std::string first_violation;    // where and what, for the report
  double seconds = 0;             // the comparison's wall time
  double other_seconds = 0;       // ...of it in the other backend's press calls (not its compositions' own runs)
  bool ok() const { return violations == 0; }
};

// One head's merged keys or values, a (reference) against b, rows of the `kept` tokens: rows
// differing beyond value_rtol (plus 1e-6 of the largest |a|) are tolerated only in tokens
// whose reference `scores` (the head's row, by position) pair up within boundary_rtol — a press
// that treats kept tokens by rank (kvcf_think zeroes channels outside its lowest-ranked entries)
// may order two near-tied tokens the other way round on another backend.
struct MergedRowsCheck {
  long first_element = -1;  // the first differing element of an untolerated difference, else -1
  float reference = 0, other = 0;
  long tolerated_rows = 0;
};
MergedRowsCheck check_merged_rows(const std::vector<float>& a, const std::vector<float>& b, const std::vector<int>& kept,
                                  std::span<const float> scores, double value_rtol, double boundary_rtol);

// Kept sets of a press compared stage by stage: `expected` is the reference's selection run on
// the other backend's inner scores and must equal `got` in every head; the tokens kept by one
// backend only (ref against got) are then the inner scores' rounding and are counted.
struct StagedSelectionCheck {
  int differing_head = -1;  // the first head where got differs from expected, else -1
  long tolerated = 0;       // tokens kept by one backend only, when none differs
};
StagedSelectionCheck check_staged_selection(const Compression& ref, const Compression& got, const Compression& expected);

// 0-based rank of `token` in one head's scores under the selection's order (higher score first,
// then the lower position): a two-stage press's first violation names its token's inner ranks.
int score_rank(std::span<const float> scores, int token);

// `spec` on the reference and on `other` over every input at every ratio. The other backend's
// presses read one copy of each input's layer on its device, made once for all their calls
// (core/evaluation.h, ResidentFactory), as the replay's do.
PressConformance compare_backends(const std::string& spec, Backend other, const std::vector<ConformanceInput>& inputs,
                                  const std::vector<double>& ratios, const ConformanceTolerance& tolerance = {});

}  // namespace kvsim
