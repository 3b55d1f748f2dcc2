#pragma once
// The table `kvsim sweep` writes: tidy long format, one row per (trace, press, ratio, layer
// or decoding step, metric), as CSV with a header or as JSON Lines. It grows one finished
// cell (the rows of one trace x press x ratio) at a time, so an interrupted sweep keeps what it
// finished and a re-run skips it.
#include <compare>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "reference/replay.h"

namespace kvsim::cli {

enum class TableFormat { csv, jsonl };
TableFormat parse_table_format(const std::string& name);

// trace, trace_crc32, backend, query_aware, press, ratio, achieved_ratio, layer, step, metric, value
const std::vector<std::string>& sweep_columns();
using SweepRow = std::vector<std::string>;  // one text per column, "" where there is none

// What identifies a cell; two rows with equal keys belong to the same cell.
struct CellKey {
  std::string trace, trace_crc32, backend, query_aware, press, ratio;
  auto operator<=>(const CellKey&) const = default;
};
CellKey cell_of(const SweepRow& row);

// The rows of one replayed run (one press at one ratio on one trace): per layer, per decoding
// step (decoding presses), then the whole run (layer "all"), whose "samples" row is the
// cell's last: a cell without it in the file was cut short.
std::vector<SweepRow> cell_rows(const CellKey& key, const ref::RunResult& run);
bool ends_cell(const SweepRow& row);

std::string encode_row(const SweepRow& row, TableFormat format);  // one line, '\n' included
// kvsim::Error (without file or line: the caller adds them) when the line is no table row.
SweepRow decode_row(const std::string& line, TableFormat format);

// The output table, opened for appending. Opening checks the whole existing file (refusing one
// that is not a sweep table of this format, without touching it), locks it against a second
// sweep, and drops an unfinished last cell or half-written last line. A file this object
// created is removed again if no cell was ever appended.
class SweepTable {
 public:
  SweepTable(const std::string& path, TableFormat format);
  ~SweepTable();
  SweepTable(const SweepTable&) = delete;
  SweepTable& operator=(const SweepTable&) = delete;

  bool has(const CellKey& key) const { return finished_.count(key) > 0; }
  std::size_t finished_cells() const { return finished_.size(); }
  // What opening dropped from the end of the file, for a note ("" when nothing).
  const std::string& repaired() const { return repaired_; }
  // Writes one cell's rows in one go and syncs them to disk.
  void append(const std::vector<SweepRow>& rows);

 private:
  void load(const std::string& content);
  std::string not_a_table() const;
  std::optional<std::size_t> rows_begin(const std::string& content, std::size_t complete) const;
  void load_rows(const std::string& content, std::size_t pos, std::size_t complete);
  void write_all(const std::string& text);

  std::string path_;
  TableFormat format_;
  int fd_ = -1;
  bool created_ = false, appended_ = false, needs_header_ = false;
  std::set<CellKey> finished_;
  std::size_t valid_bytes_ = 0;  // the prefix of the file that holds the header and finished cells
  std::string repaired_;
};

}  // namespace kvsim::cli
