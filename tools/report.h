#pragma once
// Formats replay results as a Markdown table (pasteable), CSV or JSON, at the level of
// detail asked for: one row per run, per (run, layer) or per (run, layer, head).
#include <string>

#include "reference/replay.h"

namespace kvsim {

enum class ReportFormat { table, csv, json };
enum class ReportDetail { summary, layer, head, step };  // step: per decoding step, decoding presses only

ReportFormat parse_report_format(const std::string& name);
ReportDetail parse_report_detail(const std::string& name);

// A metric as the csv and json outputs write it: 9 significant digits, "" for NaN.
std::string full_precision(double value);

std::string format_replay(const ref::ReplayResult& result, ReportFormat format, ReportDetail detail);

}  // namespace kvsim
