#pragma once
// CURPress's per-token arithmetic (arXiv 2509.15038), shared by the reference press and its
// device twin.
#include "core/hd.h"

namespace kvsim::ref {

// kvpress' leverage_type, in the order of cur's choice parameter.
enum class CurLeverage { key = 0, value = 1, kv_avg = 2, kv_product = 3 };

// Columns of CURPress' random projection G (kvpress' fixed r = 20).
inline constexpr int kCurProjectionRank = 20;

// A token's unnormalised score from its (window-normalised) key and value leverages.
KVSIM_HD static inline double cur_combine(CurLeverage type, double k2, double v2) {
  switch (type) {
    case CurLeverage::key: return k2;
    case CurLeverage::value: return v2;
    case CurLeverage::kv_avg: return (k2 + v2) / 2.0;
    default: return k2 * v2;
  }
}

}  // namespace kvsim::ref
