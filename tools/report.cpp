#include "tools/report.h"

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace kvsim {

ReportFormat parse_report_format(const std::string& name) {
  if (name == "table") return ReportFormat::table;
  if (name == "csv") return ReportFormat::csv;
  if (name == "json") return ReportFormat::json;
  throw Error("unknown --format '" + name + "' (table, csv or json)");
}

ReportDetail parse_report_detail(const std::string& name) {
  if (name == "summary") return ReportDetail::summary;
  if (name == "layer") return ReportDetail::layer;
  if (name == "head") return ReportDetail::head;
  if (name == "step") return ReportDetail::step;
  throw Error("unknown --detail '" + name + "' (summary, layer, head or step)");
}

std::string full_precision(double value) {
  if (std::isnan(value)) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", value);
  return buf;
}

namespace {

std::string fixed(double value, int decimals = 4) {
  if (std::isnan(value)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
  return buf;
}

// One output row: identifying columns plus the metric summaries.
struct Row {
  std::string press;
  double ratio, achieved;
  std::string layer, head;
  int kv_heads;  // the KV heads the row's cache spans (1 per head row): for its bytes per token
  Summary rel_err, cosine, recall, oproj;
  Summary span_retention, answer_rel_err;  // traces with answer spans
};

Summary single(double value) {  // one head's retention as a summary (count 0 when there is none)
  if (std::isnan(value)) return Summary{value, value, value, 0};
  return Summary{value, value, value, 1};
}

std::vector<Row> rows_of(const ref::ReplayResult& result, ReportDetail detail) {
  std::vector<Row> rows;
  for (const auto& run : result.runs) {
    if (detail == ReportDetail::summary) {
      rows.push_back({run.press, run.ratio, run.achieved_ratio, "all", "all", result.kv_heads, run.rel_err, run.cosine, run.recall, run.oproj_rel_err,
                      run.span_retention, run.answer_rel_err});
    } else if (detail == ReportDetail::layer) {
      for (const auto& l : run.layers)
        rows.push_back({run.press, run.ratio, 1.0 - l.kept_fraction, std::to_string(l.layer), "all", result.kv_heads, l.rel_err, l.cosine, l.recall,
                        l.oproj_rel_err, l.span_retention, l.answer_rel_err});
    } else {
      for (const auto& h : run.heads)
        rows.push_back({run.press, run.ratio, 1.0 - h.kept_fraction, std::to_string(h.layer), std::to_string(h.head), 1, h.rel_err,
                        h.cosine, h.recall, Summary{std::nan(""), std::nan(""), std::nan(""), 0}, single(h.span_retention),
                        h.answer_rel_err});
    }
  }
  return rows;
}

// The row's compressed cache in bytes per token of one layer (over its KV heads; float16
// entries, quantisers' metadata included: ref::kv_bytes_per_token).
double bytes_per_token(const ref::ReplayResult& result, const Row& r) { return ref::kv_bytes_per_token(r.achieved, r.kv_heads, result.head_dim); }

// A markdown table padded so that its columns line up in plain text too: the first column
// left-aligned, the numbers right-aligned.
std::string aligned_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& cells) {
  std::vector<std::size_t> width(header.size());
  for (std::size_t c = 0; c < header.size(); ++c) {
    width[c] = header[c].size();
    for (const auto& line : cells) width[c] = std::max(width[c], line[c].size());
  }
  std::ostringstream out;
  auto emit = [&](const std::vector<std::string>& line) {
    out << "|";
    for (std::size_t c = 0; c < line.size(); ++c) {
      const bool left = c == 0;
      const std::string pad(width[c] - line[c].size(), ' ');
      out << ' ' << (left ? line[c] + pad : pad + line[c]) << " |";
    }
    out << "\n";
  };
  emit(header);
  out << "|";
  for (std::size_t c = 0; c < header.size(); ++c) {
    const std::string dashes(width[c] - 1, '-');
    out << ' ' << (c == 0 ? ":" + dashes : dashes + ":") << " |";
  }
  out << "\n";
  for (const auto& line : cells) emit(line);
  return out.str();
}

std::string markdown(const ref::ReplayResult& result, const std::vector<Row>& rows, ReportDetail detail) {
  bool has_oproj = false;
  for (const Row& r : rows) has_oproj = has_oproj || r.oproj.count > 0;
  std::vector<std::string> header = {"press", "ratio", "achieved", "KV bytes/token", "vs float16"};
  if (detail != ReportDetail::summary) header.push_back("layer");
  if (detail == ReportDetail::head) header.push_back("head");
  for (const char* h : {"rel_err mean", "rel_err median", "rel_err p95", "cosine mean", "recall mean"}) header.push_back(h);
  if (has_oproj) header.push_back("o_proj rel_err mean");
  const bool answers = result.answer_metrics;
  if (answers) {
    header.push_back("span retention");
    header.push_back("answer rel_err mean");
  }

  std::vector<std::vector<std::string>> cells;
  for (const Row& r : rows) {
    std::vector<std::string> line = {r.press, fixed(r.ratio, 2), fixed(r.achieved, 3), fixed(bytes_per_token(result, r), 1),
                                     r.achieved < 1.0 ? fixed(1.0 / (1.0 - r.achieved), 2) + "x" : "-"};
    if (detail != ReportDetail::summary) line.push_back(r.layer);
    if (detail == ReportDetail::head) line.push_back(r.head);
    for (double v : {r.rel_err.mean, r.rel_err.median, r.rel_err.p95, r.cosine.mean, r.recall.mean}) line.push_back(fixed(v));
    if (has_oproj) line.push_back(r.oproj.count ? fixed(r.oproj.mean) : "-");
    if (answers) {
      line.push_back(r.span_retention.count ? fixed(r.span_retention.mean) : "-");
      line.push_back(r.answer_rel_err.count ? fixed(r.answer_rel_err.mean) : "-");
    }
    cells.push_back(line);
  }
  std::ostringstream out;
  out << "trace: " << result.trace << "  (compressed segment: " << result.n_compressed << " tokens; "
      << result.n_queries << " evaluation queries per layer and head)\n";
  for (const auto& run : result.runs)
    if (run.segment_queries) {
      out << "sparse prefill (" << run.press << "): the cache is unchanged; measured on the compressed segment's own queries (their "
             "attention outputs under the sparse pattern), not on the evaluation queries, which attend densely\n";
      break;
    }
  if (answers)
    out << "answer spans: span retention = share of the question's attention to the answer-span tokens on kept tokens;\n"
           "answer rel_err = rel_err at the question and answer positions only\n";
  out << "\n" << aligned_table(header, cells);
  return out.str();
}

// Traces with answer spans add span_retention_* and answer_rel_err_* columns.
std::string csv(const ref::ReplayResult& result, const std::vector<Row>& rows, bool answers) {
  std::ostringstream out;
  out << "press,ratio,achieved_ratio,layer,head";
  for (const char* m : {"rel_err", "cosine", "recall", "oproj_rel_err"})
    out << "," << m << "_mean," << m << "_median," << m << "_p95";
  if (answers)
    for (const char* m : {"span_retention", "answer_rel_err"}) out << "," << m << "_mean," << m << "_median," << m << "_p95";
  out << ",kv_bytes_per_token\n";
  for (const Row& r : rows) {
    // Specs may contain commas: quote the press column.
    out << '"' << r.press << "\"," << full_precision(r.ratio) << "," << full_precision(r.achieved) << "," << r.layer << "," << r.head;
    std::vector<const Summary*> summaries = {&r.rel_err, &r.cosine, &r.recall, &r.oproj};
    if (answers) summaries.insert(summaries.end(), {&r.span_retention, &r.answer_rel_err});
    for (const Summary* s : summaries) {
      const bool empty = s->count == 0;
      out << "," << (empty ? "" : full_precision(s->mean)) << "," << (empty ? "" : full_precision(s->median)) << ","
          << (empty ? "" : full_precision(s->p95));
    }
    out << "," << full_precision(bytes_per_token(result, r)) << "\n";
  }
  return out.str();
}

nlohmann::json summary_json(const Summary& s) {
  if (s.count == 0) return nullptr;
  return {{"mean", s.mean}, {"median", s.median}, {"p95", s.p95}, {"count", s.count}};
}

std::string json(const ref::ReplayResult& result, ReportDetail detail) {
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& run : result.runs) {
    nlohmann::json j = {{"press", run.press},
                        {"ratio", std::isnan(run.ratio) ? nlohmann::json(nullptr) : nlohmann::json(run.ratio)},
                        {"achieved_ratio", run.achieved_ratio},
                        {"kv_bytes_per_token", ref::kv_bytes_per_token(run.achieved_ratio, result.kv_heads, result.head_dim)},
                        {"rel_err", summary_json(run.rel_err)},
                        {"cosine", summary_json(run.cosine)},
                        {"recall", summary_json(run.recall)},
                        {"oproj_rel_err", summary_json(run.oproj_rel_err)}};
    if (result.answer_metrics) {
      j["span_retention"] = summary_json(run.span_retention);
      j["answer_rel_err"] = summary_json(run.answer_rel_err);
    }
    if (!run.skipped_layers.empty()) j["skipped_layers"] = run.skipped_layers;
    if (run.segment_queries) j["measured_on"] = "segment queries";
    if (detail != ReportDetail::summary) {
      nlohmann::json layers = nlohmann::json::array();
      for (const auto& l : run.layers)
        layers.push_back({{"layer", l.layer}, {"kept_fraction", l.kept_fraction}, {"rel_err", summary_json(l.rel_err)},
                          {"cosine", summary_json(l.cosine)}, {"recall", summary_json(l.recall)},
                          {"oproj_rel_err", summary_json(l.oproj_rel_err)}});
      if (result.answer_metrics)
        for (std::size_t i = 0; i < run.layers.size(); ++i) {
          layers[i]["span_retention"] = summary_json(run.layers[i].span_retention);
          layers[i]["answer_rel_err"] = summary_json(run.layers[i].answer_rel_err);
        }
      j["layers"] = layers;
    }
    if (detail == ReportDetail::head) {
      nlohmann::json heads = nlohmann::json::array();
      for (const auto& h : run.heads)
        heads.push_back({{"layer", h.layer}, {"head", h.head}, {"kept_fraction", h.kept_fraction},
                         {"rel_err", summary_json(h.rel_err)}, {"cosine", summary_json(h.cosine)}, {"recall", summary_json(h.recall)}});
      if (result.answer_metrics)
        for (std::size_t i = 0; i < run.heads.size(); ++i) {
          const double retention = run.heads[i].span_retention;
          heads[i]["span_retention"] = std::isnan(retention) ? nlohmann::json(nullptr) : nlohmann::json(retention);
          heads[i]["answer_rel_err"] = summary_json(run.heads[i].answer_rel_err);
        }
      j["heads"] = heads;
    }
    runs.push_back(j);
  }
  nlohmann::json doc = {{"trace", result.trace}, {"n_compressed", result.n_compressed}, {"n_queries", result.n_queries}, {"runs", runs}};
  if (result.answer_metrics) doc["answer_metrics"] = true;
  return doc.dump(2) + "\n";
}

// Per-step rows of the decoding presses (--detail step).
std::string steps_report(const ref::ReplayResult& result, ReportFormat format) {
  if (format == ReportFormat::json) {
    nlohmann::json runs = nlohmann::json::array();
    for (const auto& run : result.runs) {
      if (run.steps.empty()) continue;
      nlohmann::json steps = nlohmann::json::array();
      for (const auto& s : run.steps)
        steps.push_back({{"step", s.step}, {"first_position", s.first_position}, {"queries", s.queries}, {"cache_size", s.cache_size},
                         {"compressed_after", s.compressed_after}, {"rel_err", summary_json(s.rel_err)}});
      runs.push_back({{"press", run.press}, {"steps", steps}});
    }
    return nlohmann::json({{"trace", result.trace}, {"runs", runs}}).dump(2) + "\n";
  }
  std::ostringstream out;
  const bool csv = format == ReportFormat::csv;
  out << (csv ? "press,step,first_position,queries,cache_size,compressed_after,rel_err_mean,rel_err_median,rel_err_p95\n"
              : "| press | step | position | queries | cache | compressed after | rel_err mean | rel_err median | rel_err p95 |\n"
                "|:--|--:|--:|--:|--:|:--|--:|--:|--:|\n");
  for (const auto& run : result.runs)
    for (const auto& s : run.steps) {
      if (csv)
        out << '"' << run.press << "\"," << s.step << "," << s.first_position << "," << s.queries << "," << s.cache_size << ","
            << (s.compressed_after ? 1 : 0) << "," << full_precision(s.rel_err.mean) << "," << full_precision(s.rel_err.median) << ","
            << full_precision(s.rel_err.p95) << "\n";
      else
        out << "| " << run.press << " | " << s.step << " | " << s.first_position << " | " << s.queries << " | " << s.cache_size << " | "
            << (s.compressed_after ? "yes" : "") << " | " << fixed(s.rel_err.mean) << " | " << fixed(s.rel_err.median) << " | "
            << fixed(s.rel_err.p95) << " |\n";
    }
  return out.str();
}

}  // namespace

std::string format_replay(const ref::ReplayResult& result, ReportFormat format, ReportDetail detail) {
  if (detail == ReportDetail::step) return steps_report(result, format);
  const std::vector<Row> rows = rows_of(result, detail);
  switch (format) {
    case ReportFormat::table: return markdown(result, rows, detail);
    case ReportFormat::csv: return csv(result, rows, result.answer_metrics);
    case ReportFormat::json: return json(result, detail);
  }
  return "";
}

}  // namespace kvsim
