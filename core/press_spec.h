#pragma once
// A press spec names a press, its parameters and (for wrappers) the press it wraps:
//   spec   := name [ '(' spec { ';' spec } ')' ] [ ':' key '=' value { ',' key '=' value } ]
// e.g. "snapkv", "snapkv:window_size=32", "adakv(snapkv:window_size=32):alpha_safeguard=0.1",
// "prefill_decoding(snapkv;decoding(knorm):target_size=512)", "composed(knorm;snapkv;tova)".
// A value runs to the next ',', ';', '(' or ')': lists inside a value use '/', e.g.
// "per_layer(snapkv):compression_ratios=0.25/0.5/0.75".
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace kvsim {

struct PressSpec {
  std::string name;
  std::map<std::string, std::string> params;
  std::shared_ptr<PressSpec> inner;   // set for wrappers
  std::shared_ptr<PressSpec> second;  // the second press of a pair (prefill_decoding) or list
  std::vector<std::shared_ptr<PressSpec>> more;  // the third and later presses of a list (composed)

  // Every press between the parentheses, in order: inner, second, then `more`.
  std::vector<std::shared_ptr<PressSpec>> presses() const;
  std::string to_string() const;
};

// Throws kvsim::Error with the offending text on malformed input.
PressSpec parse_press_spec(const std::string& text);

}  // namespace kvsim
