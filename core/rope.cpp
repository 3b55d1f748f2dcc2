#include "core/rope.h"

#include <cmath>

namespace kvsim {

RopeConfig RopeConfig::from_theta(double theta, int head_dim) {
  RopeConfig rope;
  for (int i = 0; i < head_dim / 2; ++i) rope.inv_freq.push_back(std::pow(theta, -2.0 * i / head_dim));
  return rope;
}

namespace {

// One frequency's rotation: the same expressions for rotate() and InverseRopeTable, so both
// give the same bits.
void cos_sin(double angle_scale, double gain, const RopeConfig& rope, int i, double& c, double& s) {
  const double angle = angle_scale * rope.inv_freq[i];
  c = gain * std::cos(angle);
  s = gain * std::sin(angle);
}

inline void rotate_pair(const float* x, float* out, int i, int half, double c, double s) {
  const double lo = x[i], hi = x[i + half];
  out[i] = static_cast<float>(lo * c - hi * s);
  out[i + half] = static_cast<float>(hi * c + lo * s);
}

void rotate(const float* x, float* out, double angle_scale, double gain, const RopeConfig& rope) {
  const int half = static_cast<int>(rope.inv_freq.size());
  for (int i = 0; i < half; ++i) {
    double c, s;
    cos_sin(angle_scale, gain, rope, i, c, s);
    rotate_pair(x, out, i, half, c, s);
  }
}

}  // namespace

void apply_rope(const float* x, float* out, double position, const RopeConfig& rope) {
  rotate(x, out, position, rope.attention_scaling, rope);
}

std::vector<double> average_rope_rotation(const RopeConfig& rope, int start, int count) {
  const int half = static_cast<int>(rope.inv_freq.size()), d = 2 * half;
  std::vector<double> r(static_cast<std::size_t>(d) * d, 0.0);
  for (int i = 0; i < half; ++i) {
    double c = 0, s = 0;
    for (int p = start; p < start + count; ++p) {
      c += std::cos(p * rope.inv_freq[i]);
      s += std::sin(p * rope.inv_freq[i]);
    }
    c *= rope.attention_scaling / count;
    s *= rope.attention_scaling / count;
    r[i * d + i] = c;
    r[(i + half) * d + i + half] = c;
    r[i * d + i + half] = -s;  // out_i = x_i cos - x_{i+d/2} sin
    r[(i + half) * d + i] = s;  // out_{i+d/2} = x_{i+d/2} cos + x_i sin
  }
  return r;
}

void invert_rope(const float* x, float* out, double position, const RopeConfig& rope) {
  rotate(x, out, -position, 1.0 / rope.attention_scaling, rope);
}

InverseRopeTable::InverseRopeTable(const RopeConfig& rope, int first, int count)
    : first_(first), count_(count), half_(static_cast<int>(rope.inv_freq.size())),
      cos_(static_cast<std::size_t>(count) * half_), sin_(cos_.size()) {
  for (int p = 0; p < count; ++p)
    for (int i = 0; i < half_; ++i) {
      const std::size_t at = static_cast<std::size_t>(p) * half_ + i;
      cos_sin(-static_cast<double>(first + p), 1.0 / rope.attention_scaling, rope, i, cos_[at], sin_[at]);
    }
}

void InverseRopeTable::apply(const float* x, float* out, int position) const {
  const std::size_t at = static_cast<std::size_t>(position - first_) * half_;
  for (int i = 0; i < half_; ++i) rotate_pair(x, out, i, half_, cos_[at + i], sin_[at + i]);
}

}  // namespace kvsim
