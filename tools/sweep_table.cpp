#include "tools/sweep_table.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "tools/report.h"

namespace kvsim::cli {

TableFormat parse_table_format(const std::string& name) {
  if (name == "csv") return TableFormat::csv;
  if (name == "jsonl") return TableFormat::jsonl;
  throw Error("unknown --format '" + name + "' (csv or jsonl)");
}

namespace {

enum Column { kTrace, kCrc, kBackend, kQueryAware, kPress, kRatio, kAchieved, kLayer, kStep, kMetric, kValue, kColumns };

}  // namespace

const std::vector<std::string>& sweep_columns() {
  static const std::vector<std::string> columns = {"trace", "trace_crc32", "backend", "query_aware", "press", "ratio",
                                                   "achieved_ratio", "layer", "step", "metric", "value"};
  return columns;
}

CellKey cell_of(const SweepRow& row) {
  return {row[kTrace], row[kCrc], row[kBackend], row[kQueryAware], row[kPress], row[kRatio]};
}

bool ends_cell(const SweepRow& row) { return row[kLayer] == "all" && row[kStep].empty() && row[kMetric] == "samples"; }

std::vector<SweepRow> cell_rows(const CellKey& key, const ref::RunResult& run) {
  std::vector<SweepRow> rows;
  const SweepRow base = {key.trace, key.trace_crc32, key.backend, key.query_aware, key.press, key.ratio, "", "", "", "", ""};
  auto add = [&](SweepRow row, const std::string& metric, double value) {
    row[kMetric] = metric;
    row[kValue] = full_precision(value);
    rows.push_back(std::move(row));
  };
  auto add_summary = [&](const SweepRow& row, const std::string& name, const Summary& s) {
    if (s.count == 0) return;  // e.g. o_proj metrics of a trace without o_proj_weight
    add(row, name + "_mean", s.mean);
    add(row, name + "_median", s.median);
    add(row, name + "_p95", s.p95);
  };
  auto add_metrics = [&](const SweepRow& row, const Summary& rel_err, const Summary& cosine, const Summary& recall, const Summary& oproj) {
    add_summary(row, "rel_err", rel_err);
    add_summary(row, "cosine", cosine);
    add_summary(row, "recall", recall);
    add_summary(row, "oproj_rel_err", oproj);
    add(row, "samples", static_cast<double>(rel_err.count));  // (query, head) pairs pooled
  };
  for (const ref::LayerResult& l : run.layers) {
    SweepRow row = base;
    row[kAchieved] = full_precision(1.0 - l.kept_fraction);
    row[kLayer] = std::to_string(l.layer);
    add_metrics(row, l.rel_err, l.cosine, l.recall, l.oproj_rel_err);
  }
  SweepRow whole = base;
  whole[kAchieved] = full_precision(run.achieved_ratio);
  whole[kLayer] = "all";
  for (const ref::StepResult& s : run.steps) {
    SweepRow row = whole;
    row[kStep] = std::to_string(s.step);
    add_summary(row, "rel_err", s.rel_err);
    add(row, "cache_size", s.cache_size);
    add(row, "queries", s.queries);
    add(row, "first_position", s.first_position);
    add(row, "compressed_after", s.compressed_after ? 1 : 0);
  }
  if (run.segment_queries) add(whole, "segment_queries", 1);  // a sparse prefill's metrics are its segment queries'
  add_metrics(whole, run.rel_err, run.cosine, run.recall, run.oproj_rel_err);  // ends with "samples": the cell's last row
  return rows;
}

namespace {

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> fields;
  std::size_t pos = 0;
  while (true) {
    std::string field;
    if (pos < line.size() && line[pos] == '"') {
      for (++pos;; ++pos) {
        if (pos >= line.size()) throw Error("unterminated quoted field");
        if (line[pos] == '"') {
          if (pos + 1 < line.size() && line[pos + 1] == '"') ++pos;
          else break;
        }
        field += line[pos];
      }
      ++pos;
      if (pos < line.size() && line[pos] != ',') throw Error("text after a quoted field");
    } else {
      const std::size_t end = std::min(line.find(',', pos), line.size());
      field = line.substr(pos, end - pos);
      if (field.find('"') != std::string::npos) throw Error("a quote inside an unquoted field");
      pos = end;
    }
    fields.push_back(field);
    if (pos >= line.size()) return fields;
    ++pos;  // the comma
  }
}

// How each column is typed in JSON Lines (CSV keeps the text).
enum class Kind { text, boolean, number, layer, step };
Kind kind_of(int column) {
  switch (column) {
    case kQueryAware: return Kind::boolean;
    case kRatio: case kAchieved: case kValue: return Kind::number;
    case kLayer: return Kind::layer;
    case kStep: return Kind::step;
    default: return Kind::text;
  }
}

nlohmann::ordered_json json_value(const std::string& text, Kind kind) {
  switch (kind) {
    case Kind::text: return text;
    case Kind::boolean: return text == "true";
    case Kind::number: return text.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(std::stod(text));
    case Kind::layer: return text == "all" ? nlohmann::ordered_json("all") : nlohmann::ordered_json(std::stoi(text));
    case Kind::step: return text.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(std::stoi(text));
  }
  return nullptr;
}

std::string text_of(const nlohmann::json& value, Kind kind, const std::string& column) {
  auto bad = [&]() -> std::string { throw Error("column '" + column + "' holds " + value.dump()); };
  switch (kind) {
    case Kind::text: return value.is_string() ? value.get<std::string>() : bad();
    case Kind::boolean: return value.is_boolean() ? (value.get<bool>() ? "true" : "false") : bad();
    case Kind::number: return value.is_null() ? "" : value.is_number() ? full_precision(value.get<double>()) : bad();
    case Kind::layer:
      if (value == "all") return "all";
      return value.is_number_integer() ? std::to_string(value.get<long>()) : bad();
    case Kind::step: return value.is_null() ? "" : value.is_number_integer() ? std::to_string(value.get<long>()) : bad();
  }
  return bad();
}

std::string csv_header() {
  std::string header;
  for (const std::string& c : sweep_columns()) {
    if (!header.empty()) header += ',';
    header += c;
  }
  return header + "\n";
}

}  // namespace

std::string encode_row(const SweepRow& row, TableFormat format) {
  std::string line;
  if (format == TableFormat::csv) {
    for (int c = 0; c < kColumns; ++c) {
      if (c) line += ',';
      line += csv_field(row[c]);
    }
  } else {
    nlohmann::ordered_json object;
    for (int c = 0; c < kColumns; ++c) object[sweep_columns()[c]] = json_value(row[c], kind_of(c));
    line = object.dump();
  }
  return line + "\n";
}

SweepRow decode_row(const std::string& line, TableFormat format) {
  if (format == TableFormat::csv) {
    SweepRow row = csv_fields(line);
    if (row.size() != kColumns)
      throw Error(std::to_string(row.size()) + " fields where the sweep table has " + std::to_string(static_cast<int>(kColumns)));
    return row;
  }
  nlohmann::json object;
  try {
    object = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception&) {
    throw Error("not a JSON object");
  }
  if (!object.is_object() || object.size() != kColumns) throw Error("not a JSON object with the sweep table's columns");
  SweepRow row(kColumns);
  for (int c = 0; c < kColumns; ++c) {
    const std::string& column = sweep_columns()[c];
    if (!object.contains(column)) throw Error("no column '" + column + "'");
    row[c] = text_of(object[column], kind_of(c), column);
  }
  return row;
}

SweepTable::SweepTable(const std::string& path, TableFormat format) : path_(path), format_(format) {
  std::error_code ec;
  created_ = !std::filesystem::exists(path, ec);
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error("cannot open output file " + path + ": " + std::strerror(errno));
  try {
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) throw Error("output file " + path + " is being written by another kvsim sweep");
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) throw Error("output " + path + " is not a regular file");
    std::string content(static_cast<std::size_t>(st.st_size), '\0');
    for (std::size_t done = 0; done < content.size();) {
      const ssize_t n = ::pread(fd_, content.data() + done, content.size() - done, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw Error("cannot read output file " + path + (n < 0 ? std::string(": ") + std::strerror(errno) : std::string()));
      done += static_cast<std::size_t>(n);
    }
    load(content);
    if (valid_bytes_ < content.size() && ::ftruncate(fd_, static_cast<off_t>(valid_bytes_)) != 0)
      throw Error("cannot drop the unfinished end of output file " + path + ": " + std::strerror(errno));
  } catch (...) {
    ::close(fd_);
    if (created_) std::filesystem::remove(path, ec);
    throw;
  }
}

SweepTable::~SweepTable() {
  ::close(fd_);
  std::error_code ec;
  if (created_ && !appended_) std::filesystem::remove(path_, ec);
}

// Reads the existing rows: finished cells, and the byte length of the part to keep.
void SweepTable::load(const std::string& content) {
  const std::size_t last_newline = content.rfind('\n');
  const std::size_t complete = last_newline == std::string::npos ? 0 : last_newline + 1;
  const std::optional<std::size_t> first_row = rows_begin(content, complete);
  if (!first_row) {  // a CSV table that is empty, or a header cut short
    needs_header_ = true;
    if (!content.empty()) repaired_ = "dropped a half-written header";
    return;
  }
  load_rows(content, *first_row, complete);
  if (complete < content.size()) repaired_ += std::string(repaired_.empty() ? "dropped" : " and") + " a half-written last line";
}

std::string SweepTable::not_a_table() const {
  return path_ + " is not a kvsim sweep table in " + (format_ == TableFormat::csv ? "CSV" : "JSON Lines");
}

// Where the rows start (after the CSV header), checking that the file begins as one of our
// tables; none for a CSV table with no whole header. `complete`: the bytes up to the last newline.
std::optional<std::size_t> SweepTable::rows_begin(const std::string& content, std::size_t complete) const {
  if (format_ == TableFormat::csv) {
    const std::string header = csv_header();
    if (complete == 0 && header.compare(0, content.size(), content) == 0) return std::nullopt;
    if (content.compare(0, header.size(), header) != 0)
      throw Error(not_a_table() + " (its first line is not the header " + header.substr(0, header.size() - 1) + "); nothing was changed");
    return header.size();
  }
  const std::string start = "{\"trace\":";
  if (complete == 0 && content.compare(0, start.size(), start, 0, std::min(start.size(), content.size())) != 0)
    throw Error(not_a_table() + " (it does not start with " + start + "); nothing was changed");  // a partial first line must look like a row
  return 0;
}

// The whole lines from `pos` to `complete`: each cell's rows must be contiguous; a cell
// without its last row may only end the file, and is dropped.
void SweepTable::load_rows(const std::string& content, std::size_t pos, std::size_t complete) {
  bool open = false;  // rows of a cell whose last row has not come yet
  CellKey open_key;
  std::size_t open_start = 0, open_rows = 0;
  for (int line_number = format_ == TableFormat::csv ? 2 : 1; pos < complete; ++line_number) {
    const std::size_t end = content.find('\n', pos);
    SweepRow row;
    try {
      row = decode_row(content.substr(pos, end - pos), format_);
    } catch (const Error& e) {
      throw Error(not_a_table() + " (line " + std::to_string(line_number) + ": " + e.what() + "); nothing was changed");
    }
    const CellKey key = cell_of(row);
    if (open && key != open_key)
      throw Error(path_ + " line " + std::to_string(line_number) + ": the cell before it (" + open_key.trace + ", " + open_key.press +
                  ", ratio " + open_key.ratio + ") stops before its last row; the table was edited or damaged; nothing was changed");
    if (!open) {
      open = true;
      open_key = key;
      open_start = pos;
      open_rows = 0;
    }
    ++open_rows;
    if (ends_cell(row)) {
      finished_.insert(key);
      open = false;
    }
    pos = end + 1;
  }
  valid_bytes_ = open ? open_start : complete;
  needs_header_ = format_ == TableFormat::csv && valid_bytes_ == 0;
  if (open)
    repaired_ = "dropped the " + std::to_string(open_rows) + " rows of an unfinished cell (" + open_key.trace + ", " + open_key.press +
                ", ratio " + open_key.ratio + ")";
}

void SweepTable::write_all(const std::string& text) {
  for (std::size_t done = 0; done < text.size();) {
    const ssize_t n = ::write(fd_, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error("cannot write output file " + path_ + ": " + std::strerror(errno));
    done += static_cast<std::size_t>(n);
  }
}

void SweepTable::append(const std::vector<SweepRow>& rows) {
  if (rows.empty() || !ends_cell(rows.back())) throw Error("internal: a sweep cell must end with its 'samples' row");
  std::string text = needs_header_ ? csv_header() : "";
  for (const SweepRow& row : rows) text += encode_row(row, format_);
  write_all(text);
  if (::fdatasync(fd_) != 0) throw Error("cannot sync output file " + path_ + ": " + std::strerror(errno));
  needs_header_ = false;
  appended_ = true;
  finished_.insert(cell_of(rows.back()));
}

}  // namespace kvsim::cli
