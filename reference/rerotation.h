#pragma once
// Re-rotated keys of a compression's kept tokens (kvpress KeyRerotationPress.rerotate_keys),
// for the reference presses that prune and re-rotate (key_rerotation, finch).
#include <vector>

#include "core/press.h"
#include "core/rope_rotation.h"
#include "reference/parallel.h"

namespace kvsim::ref {

// Per head, the kept keys rotated to their places in the pruned cache: [kept, d] row-major.
inline std::vector<std::vector<float>> rerotated_kept_keys(const PressInput& in, const Compression& c) {
  const int d = in.head_dim(), half = d / 2;
  std::vector<std::vector<float>> keys(c.kept.size());
  parallel_for(static_cast<int>(c.kept.size()), [&](int g) {
    const std::vector<int>& kept = c.kept[g];
    keys[g].resize(kept.size() * static_cast<std::size_t>(d));
    for (std::size_t r = 0; r < kept.size(); ++r)
      rotate_by_positions(in.layer.k.head(g) + static_cast<std::size_t>(kept[r]) * d, keys[g].data() + r * d,
                          rerotation_offset(kept[r], static_cast<int>(r), in.n, static_cast<int>(kept.size())), in.rope.inv_freq.data(),
                          half);
  });
  return keys;
}

}  // namespace kvsim::ref
