// Core building blocks: Philox known answers, half/bfloat16 rounding, percentiles,
// parameter validation, press spec parsing and registry errors.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/half.h"
#include "core/philox.h"
#include "core/press_spec.h"
#include "core/registry.h"
#include "core/rope.h"
#include "core/stats.h"

namespace kvsim {
namespace {

// Known-answer vectors published with Random123 (kat_vectors, philox4x32 10 rounds).
TEST(Philox, MatchesRandom123KnownAnswers) {
  const Philox4x32 zero = philox4x32_10(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(zero.v[0], 0x6627e8d5u);
  EXPECT_EQ(zero.v[1], 0xe169c58du);
  EXPECT_EQ(zero.v[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.v[3], 0x9b00dbd8u);
  const Philox4x32 ones = philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);
  EXPECT_EQ(ones.v[0], 0x408f276du);
  EXPECT_EQ(ones.v[1], 0x41c83b0eu);
  EXPECT_EQ(ones.v[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.v[3], 0x6d5451fdu);
  const Philox4x32 pi = philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(pi.v[0], 0xd16cfe09u);
  EXPECT_EQ(pi.v[1], 0x94fdccebu);
  EXPECT_EQ(pi.v[2], 0x5001e420u);
  EXPECT_EQ(pi.v[3], 0x24126ea1u);
}

TEST(Philox, UniformIsInUnitIntervalAndKeyed) {
  double sum = 0;
  for (uint32_t t = 0; t < 10000; ++t) {
    const float u = philox_uniform(7, 1, 2, t);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.02);
  EXPECT_EQ(philox_uniform(7, 1, 2, 3), philox_uniform(7, 1, 2, 3));
  EXPECT_NE(philox_uniform(7, 1, 2, 3), philox_uniform(8, 1, 2, 3));
  EXPECT_NE(philox_uniform(7, 1, 2, 3), philox_uniform(7, 2, 2, 3));
}

TEST(Half, RoundTripsEveryHalfAndRoundsToNearestEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = half_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_half(f), h) << std::hex << h;
  }
  EXPECT_EQ(half_to_float(float_to_half(1.0f)), 1.0f);
  EXPECT_EQ(round_to_half(1.0f + 1.0f / 2048), 1.0f);                    // halfway, even stays
  EXPECT_EQ(round_to_half(1.0f + 3.0f / 2048), 1.0f + 2.0f / 1024);      // halfway, rounds up to even
  EXPECT_EQ(round_to_half(65520.0f), INFINITY);
  EXPECT_EQ(round_to_half(5.96046448e-8f), 5.96046448e-8f);  // smallest subnormal
  EXPECT_EQ(round_to_bf16(1.0f + 1.0f / 256), 1.0f);         // halfway, even stays
  EXPECT_EQ(round_to_bf16(1.0f + 3.0f / 256), 1.0f + 4.0f / 256);
  EXPECT_EQ(round_to_bf16(-2.5f), -2.5f);
}

// half_to_float against the format's definition, (-1)^s 2^(e-15) (1 + m/1024), or 2^-14 m/1024
// for e = 0, inf and NaN (payload kept) for e = 31: every one of the 65536 inputs.
TEST(Half, WidensEveryHalfToItsDefinedValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const int sign = h >> 15, exponent = (h >> 10) & 31, mantissa = h & 1023;
    const float got = half_to_float(static_cast<uint16_t>(h));
    if (exponent == 31 && mantissa != 0) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
      ASSERT_EQ(float_bits(got), (static_cast<uint32_t>(sign) << 31) | 0x7F800000u | (static_cast<uint32_t>(mantissa) << 13)) << std::hex << h;
      continue;
    }
    const double magnitude = exponent == 31 ? INFINITY
                             : exponent == 0 ? std::ldexp(mantissa / 1024.0, -14)
                                             : std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
    const float expected = static_cast<float>(sign ? -magnitude : magnitude);
    ASSERT_EQ(float_bits(got), float_bits(expected)) << std::hex << h;  // bits: -0 differs from +0
  }
}

TEST(Stats, PercentilesInterpolateLinearly) {
  // numpy.percentile([1, 2, 3, 4], [50, 95]) = [2.5, 3.85]
  const Summary s = summarize({4, 1, 3, 2});
  EXPECT_DOUBLE_EQ(s.mean, 2.5);
  EXPECT_DOUBLE_EQ(s.median, 2.5);
  EXPECT_NEAR(s.p95, 3.85, 1e-12);
  EXPECT_EQ(s.count, 4u);
  EXPECT_DOUBLE_EQ(summarize({7}).p95, 7.0);
}

TEST(Rope, InverseUndoesRotationAndPreservesNorm) {
  RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  const float x[8] = {1, -2, 3, 0.5f, -1, 2, 0.25f, 4};
  float y[8], z[8];
  apply_rope(x, y, 37, rope);
  invert_rope(y, z, 37, rope);
  double nx = 0, ny = 0;
  for (int i = 0; i < 8; ++i) {
    EXPECT_NEAR(z[i], x[i], 1e-5);
    nx += x[i] * x[i];
    ny += y[i] * y[i];
  }
  EXPECT_NEAR(nx, ny, 1e-4);
  // Position 0 is the identity; dimension pair (0, 4) rotates by p * theta^0 = p radians.
  apply_rope(x, y, 0, rope);
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(y[i], x[i]);
  apply_rope(x, y, 1, rope);
  EXPECT_NEAR(y[0], x[0] * std::cos(1.0) - x[4] * std::sin(1.0), 1e-6);
  EXPECT_NEAR(y[4], x[4] * std::cos(1.0) + x[0] * std::sin(1.0), 1e-6);
}

TEST(PressSpec, ParsesNamesParametersAndWrappers) {
  const PressSpec plain = parse_press_spec("snapkv");
  EXPECT_EQ(plain.name, "snapkv");
  EXPECT_TRUE(plain.params.empty());
  const PressSpec nested = parse_press_spec("adakv(snapkv:window_size=32,kernel_size=3):alpha_safeguard=0.1");
  EXPECT_EQ(nested.name, "adakv");
  EXPECT_EQ(nested.params.at("alpha_safeguard"), "0.1");
  ASSERT_TRUE(nested.inner);
  EXPECT_EQ(nested.inner->name, "snapkv");
  EXPECT_EQ(nested.inner->params.at("window_size"), "32");
  EXPECT_EQ(nested.inner->params.at("kernel_size"), "3");
  EXPECT_EQ(parse_press_spec(nested.to_string()).to_string(), nested.to_string());
  EXPECT_EQ(parse_press_spec("dms(knorm):threshold=-4").params.at("threshold"), "-4");
  const PressSpec pair = parse_press_spec("prefill_decoding(snapkv:window_size=8;decoding(knorm):target_size=64)");
  ASSERT_TRUE(pair.inner && pair.second);
  EXPECT_EQ(pair.inner->params.at("window_size"), "8");
  EXPECT_EQ(pair.second->name, "decoding");
  EXPECT_EQ(pair.second->params.at("target_size"), "64");
  EXPECT_EQ(parse_press_spec(pair.to_string()).to_string(), pair.to_string());
}

TEST(PressSpec, ParsesListsOfPresses) {
  const PressSpec list = parse_press_spec("composed(knorm;snapkv:window_size=8,kernel_size=3;chunk(tova):chunk_length=4;none):compression_ratios=0.1/0.2/0.3/0.4");
  EXPECT_EQ(list.name, "composed");
  EXPECT_EQ(list.params.at("compression_ratios"), "0.1/0.2/0.3/0.4");
  ASSERT_TRUE(list.inner && list.second);
  EXPECT_EQ(list.inner->name, "knorm");
  EXPECT_EQ(list.second->name, "snapkv");
  EXPECT_EQ(list.second->params.at("kernel_size"), "3");
  ASSERT_EQ(list.more.size(), 2u);
  EXPECT_EQ(list.more[0]->name, "chunk");
  EXPECT_EQ(list.more[0]->inner->name, "tova");
  EXPECT_EQ(list.more[0]->params.at("chunk_length"), "4");
  EXPECT_EQ(list.more[1]->name, "none");
  const auto presses = list.presses();
  ASSERT_EQ(presses.size(), 4u);
  EXPECT_EQ(presses[0]->name, "knorm");
  EXPECT_EQ(presses[3]->name, "none");
  EXPECT_EQ(list.to_string(), "composed(knorm;snapkv:kernel_size=3,window_size=8;chunk(tova):chunk_length=4;none):compression_ratios=0.1/0.2/0.3/0.4");
  EXPECT_EQ(parse_press_spec(list.to_string()).to_string(), list.to_string());
  // Lists nest.
  const PressSpec nested = parse_press_spec("composed(composed(knorm;tova;random);snapkv)");
  ASSERT_EQ(nested.inner->presses().size(), 3u);
  EXPECT_EQ(nested.inner->more[0]->name, "random");
  EXPECT_TRUE(nested.more.empty());
  EXPECT_EQ(nested.to_string(), "composed(composed(knorm;tova;random);snapkv)");
  for (const char* bad : {"composed(knorm;)", "composed(;knorm)", "composed(knorm;;tova)", "composed(knorm;tova"}) {
    try {
      parse_press_spec(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad press spec"), std::string::npos) << e.what();
    }
  }
}

TEST(PressSpec, RejectsMalformedSpecsWithTheirText) {
  for (const char* bad : {"", "snapkv:", "snapkv:window_size", "snapkv:=3", "adakv(snapkv", "snapkv)", "snap kv",
                          "snapkv:a=1,a=2", "adakv()"}) {
    try {
      parse_press_spec(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad press spec"), std::string::npos) << e.what();
    }
  }
}

TEST(Params, ValidatesTypesRangesAndRequiredValues) {
  const std::vector<ParamDef> schema = {{"window_size", ParamType::Int, 64.0, 1.0, {}, ""},
                                        {"alpha", ParamType::Float, 0.2, 0.0, 1.0, ""},
                                        {"flag", ParamType::Bool, 0.0, {}, {}, ""},
                                        {"threshold", ParamType::Float, {}, {}, {}, ""}};
  const ParamValues v = ParamValues::resolve("p", schema, {{"threshold", "-4"}, {"flag", "true"}});
  EXPECT_EQ(v.get_int("window_size"), 64);
  EXPECT_DOUBLE_EQ(v.get("alpha"), 0.2);
  EXPECT_TRUE(v.get_bool("flag"));
  EXPECT_DOUBLE_EQ(v.get("threshold"), -4.0);
  auto message = [&](std::map<std::string, std::string> given) {
    try {
      ParamValues::resolve("p", schema, given);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({}).find("parameter 'threshold' is required"), std::string::npos);
  EXPECT_NE(message({{"threshold", "1"}, {"window_size", "2.5"}}).find("expects an integer"), std::string::npos);
  EXPECT_NE(message({{"threshold", "1"}, {"window_size", "0"}}).find("below its minimum"), std::string::npos);
  EXPECT_NE(message({{"threshold", "1"}, {"alpha", "1.5"}}).find("above its maximum"), std::string::npos);
  EXPECT_NE(message({{"threshold", "nan"}}).find("expects a finite"), std::string::npos);
  EXPECT_NE(message({{"threshold", "1"}, {"flag", "yes"}}).find("expects true or false"), std::string::npos);
  EXPECT_NE(message({{"threshold", "1"}, {"windw", "3"}}).find("has no parameter 'windw'"), std::string::npos);
}

TEST(Params, ParsesFloatListsSeparatedBySlashes) {
  const std::vector<ParamDef> schema = {{"ratios", ParamType::FloatList, {}, 0.0, 0.9, "", {}, false, std::nullopt},
                                        {"optional", ParamType::FloatList, {}, {}, {}, "", {}, false, std::vector<double>{}}};
  const ParamValues v = ParamValues::resolve("p", schema, {{"ratios", "0.25/0.5/0"}});
  EXPECT_EQ(v.get_list("ratios"), (std::vector<double>{0.25, 0.5, 0.0}));
  EXPECT_TRUE(v.get_list("optional").empty());
  EXPECT_EQ(ParamValues::resolve("p", schema, {{"ratios", "0.5"}, {"optional", "-1/2"}}).get_list("optional"), (std::vector<double>{-1, 2}));
  EXPECT_EQ(format_param_list({0.25, 0.5}), "0.25/0.5");
  EXPECT_EQ(format_param_default(schema[0]), "<required>");
  auto message = [&](std::map<std::string, std::string> given) {
    try {
      ParamValues::resolve("p", schema, given);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({}).find("parameter 'ratios' is required"), std::string::npos);
  EXPECT_NE(message({{"ratios", "0.1/x"}}).find("entry 2 is 'x'"), std::string::npos);
  EXPECT_NE(message({{"ratios", "0.1//0.2"}}).find("separated by '/'"), std::string::npos);
  EXPECT_NE(message({{"ratios", "0.1/"}}).find("separated by '/'"), std::string::npos);
  EXPECT_NE(message({{"ratios", "0.1/0.95"}}).find("parameter 'ratios'[1] = 0.95 is above its maximum 0.9"), std::string::npos);
  EXPECT_NE(message({{"ratios", "-0.1"}}).find("below its minimum"), std::string::npos);
}

TEST(Registry, ValidatesListsOfPresses) {
  const Registry& registry = Registry::instance();
  auto message = [&](const std::string& spec) {
    try {
      registry.make(spec, Backend::reference);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message("composed(knorm;snapkv;tova)"), "no error");
  EXPECT_EQ(registry.check(parse_press_spec("composed(knorm;tova;random)"), Backend::reference).name, "composed");
  EXPECT_NE(message("composed").find("takes a list of presses"), std::string::npos);
  EXPECT_NE(message("composed(knorm;nosuch)").find("unknown press 'nosuch'"), std::string::npos);
  EXPECT_NE(message("composed(knorm;observed_attention)").find("can only be the first press of 'composed'"), std::string::npos);
  EXPECT_EQ(message("composed(observed_attention;knorm)"), "no error");
  EXPECT_NE(message("adakv(snapkv;knorm)").find("takes at most one inner press, but got 2"), std::string::npos);
  EXPECT_NE(message("chunk(snapkv;knorm;tova)").find("takes at most one inner press, but got 3"), std::string::npos);
  EXPECT_NE(message("prefill_decoding(snapkv;decoding(knorm);knorm)").find("takes two presses, but got 3"), std::string::npos);
  EXPECT_NE(message("composed(knorm;snapkv):compression_ratios=0.5").find("1 entries for 2 presses"), std::string::npos);
}

TEST(Registry, ReportsUnknownPressesAndMisusedWrappers) {
  const Registry& registry = Registry::instance();
  auto message = [&](const std::string& spec) {
    try {
      registry.make(spec, Backend::reference);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("nosuchpress").find("unknown press 'nosuchpress'"), std::string::npos);
  EXPECT_NE(message("adakv").find("wraps a scorer"), std::string::npos);
  EXPECT_NE(message("snapkv(knorm)").find("does not wrap"), std::string::npos);
  EXPECT_NE(message("adakv(adakv(snapkv))").find("is not one"), std::string::npos);
  EXPECT_NE(message("adakv(none)").find("is not one"), std::string::npos);
  EXPECT_NE(message("dms(knorm)").find("'threshold' is required"), std::string::npos);
  EXPECT_NE(message("adakv(observed_attention)").find("cannot be wrapped"), std::string::npos);
  EXPECT_NE(message("snapkv:window_size=abc").find("window_size"), std::string::npos);
  EXPECT_EQ(message("adakv(snapkv:window_size=16)"), "no error");
  EXPECT_NE(message("prefill_decoding(snapkv)").find("takes two presses"), std::string::npos);
  EXPECT_NE(message("prefill_decoding(snapkv;knorm)").find("must be a decoding press"), std::string::npos);
  EXPECT_NE(message("adakv(snapkv;knorm)").find("at most one inner press"), std::string::npos);
  EXPECT_EQ(message("prefill_decoding(snapkv;cam(knorm))"), "no error");
}

}  // namespace
}  // namespace kvsim

namespace kvsim {
namespace {

// Integer parameters are held as int by the presses: values beyond 1e9 are refused, not wrapped.
TEST(Params, RefusesIntegersThatWouldOverflow) {
  EXPECT_THROW(Registry::instance().make("streaming_llm:n_sink=1e10", Backend::reference), Error);
  EXPECT_THROW(Registry::instance().make("snapkv:window_size=1e10", Backend::reference), Error);
  EXPECT_THROW(Registry::instance().make("lagkv:lag_size=1e10", Backend::reference), Error);
  EXPECT_NO_THROW(Registry::instance().make("streaming_llm:n_sink=1000", Backend::reference));
}

}  // namespace
}  // namespace kvsim
