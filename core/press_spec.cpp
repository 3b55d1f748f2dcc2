#include "core/press_spec.h"

#include <cctype>

#include "core/error.h"

namespace kvsim {

namespace {

class SpecParser {
 public:
  explicit SpecParser(const std::string& text) : text_(text) {}

  PressSpec parse() {
    PressSpec spec = parse_spec();
    if (pos_ != text_.size()) fail("unexpected '" + std::string(1, text_[pos_]) + "'");
    return spec;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error("bad press spec '" + text_ + "' at column " + std::to_string(pos_ + 1) + ": " + what);
  }

  static bool is_name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

  std::string parse_name() {
    const std::size_t start = pos_;
    while (pos_ < text_.size() && is_name_char(text_[pos_])) ++pos_;
    if (pos_ == start) fail("expected a name");
    return text_.substr(start, pos_ - start);
  }

  std::string parse_value() {
    const std::size_t start = pos_;
    while (pos_ < text_.size() && text_[pos_] != ',' && text_[pos_] != ')' && text_[pos_] != '(' && text_[pos_] != ';') ++pos_;
    if (pos_ == start) fail("expected a value");
    return text_.substr(start, pos_ - start);
  }

  PressSpec parse_spec() {
    PressSpec spec;
    spec.name = parse_name();
    if (pos_ < text_.size() && text_[pos_] == '(') {
      ++pos_;
      spec.inner = std::make_shared<PressSpec>(parse_spec());
      while (pos_ < text_.size() && text_[pos_] == ';') {
        ++pos_;
        auto next = std::make_shared<PressSpec>(parse_spec());
        if (!spec.second) spec.second = std::move(next);
        else spec.more.push_back(std::move(next));
      }
      if (pos_ >= text_.size() || text_[pos_] != ')') fail("expected ')'");
      ++pos_;
    }
    if (pos_ < text_.size() && text_[pos_] == ':') {
      do {
        ++pos_;
        const std::string key = parse_name();
        if (pos_ >= text_.size() || text_[pos_] != '=') fail("expected '=' after '" + key + "'");
        ++pos_;
        if (spec.params.count(key)) fail("parameter '" + key + "' given twice");
        spec.params[key] = parse_value();
      } while (pos_ < text_.size() && text_[pos_] == ',');
    }
    return spec;
  }

  const std::string& text_;
  std::size_t pos_ = 0;
};

}  // namespace

PressSpec parse_press_spec(const std::string& text) { return SpecParser(text).parse(); }

std::vector<std::shared_ptr<PressSpec>> PressSpec::presses() const {
  std::vector<std::shared_ptr<PressSpec>> out;
  if (inner) out.push_back(inner);
  if (second) out.push_back(second);
  out.insert(out.end(), more.begin(), more.end());
  return out;
}

std::string PressSpec::to_string() const {
  std::string out = name;
  if (inner) {
    out += "(";
    out += inner->to_string();
    for (const auto& next : presses()) {
      if (next == inner) continue;
      out += ';';
      out += next->to_string();
    }
    out += ")";
  }
  bool first = true;
  for (const auto& [key, value] : params) {
    out += (first ? ":" : ",") + key + "=" + value;
    first = false;
  }
  return out;
}

}  // namespace kvsim
