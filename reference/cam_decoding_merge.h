#pragma once
// CaM's merge step during decoding (kvpress CAMPress, kvpress/presses/cam_press.py), on one KV
// head's cache: each merge candidate e (an evicted index) is folded into the window of the next
// m_e = min(merge_budget, kept tokens after e) kept tokens with probability
// p_e = clamp(A_e / mean over the window of A, 0, 1) (NaN -> 0): v_u += b_e v_e / m_e for u in
// the window, b_e = [draw(e) < p_e]. Every merge reads the pre-merge values (docs/merge_bounds.md,
// P24). A candidate with no kept token after it merges nowhere.
#include <functional>
#include <vector>

namespace kvsim::ref {

// `values`: the cache's value rows, updated in place (rows outside `kept` are left as they
// were); `attention`: the cache's running attention A; `kept`: the surviving indices, ascending;
// `candidates`: the evicted indices to merge, ascending; `draw(e)`: candidate e's uniform draw.
void cam_merge_into_next_kept(std::vector<std::vector<float>>& values, const std::vector<double>& attention, const std::vector<int>& kept,
                              const std::vector<int>& candidates, int merge_budget, const std::function<float(int)>& draw);

}  // namespace kvsim::ref
