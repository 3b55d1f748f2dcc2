#include "core/rope.h"

#include <cmath>

namespace kvsim {

RopeConfig RopeConfig::from_theta(double theta, int head_dim) {
  RopeConfig rope;
  for (int i = 0; i < head_dim / 2; ++i) rope.inv_freq.push_back(std::pow(theta, -2.0 * i / head_dim));
  return rope;
}

namespace {

void rotate(const float* x, float* out, double angle_scale, double gain, const RopeConfig& rope) {
  const int half = static_cast<int>(rope.inv_freq.size());
  for (int i = 0; i < half; ++i) {
    const double angle = angle_scale * rope.inv_freq[i];
    const double c = gain * std::cos(angle), s = gain * std::sin(angle);
    const double lo = x[i], hi = x[i + half];
    out[i] = static_cast<float>(lo * c - hi * s);
    out[i + half] = static_cast<float>(hi * c + lo * s);
  }
}

}  // namespace

void apply_rope(const float* x, float* out, double position, const RopeConfig& rope) {
  rotate(x, out, position, rope.attention_scaling, rope);
}

void invert_rope(const float* x, float* out, double position, const RopeConfig& rope) {
  rotate(x, out, -position, 1.0 / rope.attention_scaling, rope);
}

}  // namespace kvsim
