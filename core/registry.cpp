#include "core/registry.h"

#include "core/error.h"

namespace kvsim {

std::string backend_name(Backend backend) {
  switch (backend) {
    case Backend::reference: return "reference";
    case Backend::cuda: return "cuda";
    case Backend::cuda_emulated: return "cuda-emu";
  }
  return "?";
}

Backend parse_backend(const std::string& name) {
  for (Backend b : kAllBackends)
    if (name == backend_name(b)) return b;
  throw Error("unknown backend '" + name + "' (backends: reference, cuda, cuda-emu)");
}

Registry& Registry::instance() {
  static Registry registry;
  return registry;
}

void Registry::add(const PressInfo& info, Backend backend, PressFactory factory) {
  Entry& entry = entries_[info.name];
  entry.info = info;
  entry.factories[backend] = std::move(factory);
}

void Registry::add_implementation(const std::string& name, Backend backend, PressFactory factory) {
  entries_[name].factories[backend] = std::move(factory);
}

const PressInfo* Registry::find(const std::string& name) const {
  const auto it = entries_.find(name);
  return it == entries_.end() || it->second.info.name.empty() ? nullptr : &it->second.info;
}

std::vector<const PressInfo*> Registry::presses() const {
  std::vector<const PressInfo*> out;
  for (const auto& [name, entry] : entries_)
    if (!entry.info.name.empty()) out.push_back(&entry.info);  // described by its reference
  return out;
}

bool Registry::implements(const std::string& name, Backend backend) const {
  const auto it = entries_.find(name);
  return it != entries_.end() && it->second.factories.count(backend) > 0;
}

const PressInfo& Registry::check(const PressSpec& spec, Backend backend) const {
  const auto it = entries_.find(spec.name);
  if (it == entries_.end() || it->second.info.name.empty()) {
    std::string names;
    for (const PressInfo* info : presses()) names += (names.empty() ? "" : ", ") + info->name;
    throw Error("unknown press '" + spec.name + "' (known presses: " + names + ")");
  }
  const PressInfo& info = it->second.info;
  if (!it->second.factories.count(backend))
    throw Error("press '" + spec.name + "' is not implemented on the " + backend_name(backend) + " backend");
  if (info.wraps_pair) {
    if (!spec.more.empty())
      throw Error("press '" + spec.name + "' takes two presses, but got " + std::to_string(spec.presses().size()));
    if (!spec.inner || !spec.second)
      throw Error("press '" + spec.name + "' takes two presses: " + spec.name + "(<prefill press>;<decoding press>), e.g. " + spec.name +
                  "(snapkv;decoding(knorm))");
    if (check(*spec.inner, backend).query_time)
      throw Error("press '" + spec.name + "': its prefill press cannot be '" + spec.inner->name + "', which evicts nothing (its queries attend sparsely)");
    const PressInfo& decoding = check(*spec.second, backend);
    if (!decoding.decoding)
      throw Error("press '" + spec.name + "': its second press must be a decoding press (decoding, compression_ratio_decoding, cam), not '" +
                  decoding.name + "'");
    ParamValues::resolve(spec.name, info.params, spec.params);
    return info;
  }
  if (info.wraps_list) {
    if (!spec.inner)
      throw Error("press '" + spec.name + "' takes a list of presses: " + spec.name + "(<press>;<press>;...), e.g. " + spec.name +
                  "(knorm;snapkv)");
    const auto presses = spec.presses();
    for (std::size_t i = 0; i < presses.size(); ++i) {
      const PressInfo& element = check(*presses[i], backend);
      if (!element.wrappable && i > 0)
        throw Error("press '" + element.name + "' can only be the first press of '" + spec.name +
                    "' (kvpress gives every press the attentions of the full cache)");
    }
    ParamValues::resolve(spec.name, info.params, spec.params);
    return info;
  }
  if (spec.second)
    throw Error("press '" + spec.name + "' takes at most one inner press, but got " + std::to_string(spec.presses().size()) + ": '" +
                spec.to_string() + "'");
  if (info.wraps_scorer && !spec.inner)
    throw Error("press '" + spec.name + "' wraps a scorer: write it as " + spec.name + "(<scorer>), e.g. " +
                spec.name + "(snapkv)");
  if (!info.wraps_scorer && spec.inner)
    throw Error("press '" + spec.name + "' does not wrap another press, but got '(" + spec.inner->to_string() + ")'");
  if (spec.inner) {
    const PressInfo& inner = check(*spec.inner, backend);
    if (!inner.is_scorer)
      throw Error("press '" + spec.name + "' needs a scorer press inside, and '" + inner.name + "' is not one");
    if (!inner.wrappable)
      throw Error("press '" + inner.name + "' cannot be wrapped (kvpress forbids it inside '" + spec.name + "')");
  }
  ParamValues::resolve(spec.name, info.params, spec.params);
  return info;
}

std::unique_ptr<Press> Registry::make(const PressSpec& spec, Backend backend) const {
  const PressInfo& info = check(spec, backend);
  PressConfig config{info, ParamValues::resolve(spec.name, info.params, spec.params), spec.inner, spec.second, backend, *this, spec.more};
  return entries_.at(spec.name).factories.at(backend)(config);
}

std::unique_ptr<Press> Registry::make(const std::string& spec, Backend backend) const {
  return make(parse_press_spec(spec), backend);
}

}  // namespace kvsim
