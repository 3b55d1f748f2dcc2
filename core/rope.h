#pragma once
// Rotary position embedding in the Hugging Face "rotate_half" convention
// (transformers' apply_rotary_pos_emb). inv_freq already includes any rope_scaling (llama3, linear,
// ...); attention_scaling multiplies cos and sin (1 for default RoPE).
#include <vector>

namespace kvsim {

struct RopeConfig {
  std::vector<double> inv_freq;  // [head_dim / 2]
  double attention_scaling = 1.0;

  // Default (unscaled) RoPE: inv_freq[i] = theta^(-2i/d).
  static RopeConfig from_theta(double theta, int head_dim);
};

// out = RoPE_p(x); x and out have head_dim = 2 * inv_freq.size() entries (may alias).
void apply_rope(const float* x, float* out, double position, const RopeConfig& rope);
// out = RoPE_p^{-1}(x): rotate by -p and divide by attention_scaling^2 (may alias).
void invert_rope(const float* x, float* out, double position, const RopeConfig& rope);

// The rotations of invert_rope for positions [first, first + count), computed once: many
// rows at the same positions (every query head of a layer) then share the cos/sin work.
class InverseRopeTable {
 public:
  InverseRopeTable(const RopeConfig& rope, int first, int count);
  // out = RoPE_p^{-1}(x), bit-identical to invert_rope(x, out, p, rope); p in [first, first + count).
  void apply(const float* x, float* out, int position) const;
  int first() const { return first_; }
  int count() const { return count_; }

 private:
  int first_, count_, half_;
  std::vector<double> cos_, sin_;  // [count, half], attention-scaling gain folded in
};

// Mean over positions [start, start + count) of the RoPE matrices
// R(p) = diag(cos p) + diag(sin p) P (attention_scaling folded in), row-major d x d in
// float64 — Expected Attention's average future rotation (kvpress/presses/expected_attention_press.py).
std::vector<double> average_rope_rotation(const RopeConfig& rope, int start, int count);

}  // namespace kvsim
