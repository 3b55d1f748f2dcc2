#pragma once
// Artefacts: model-specific tensors that some presses need besides a trace (Q-filters,
// DuoAttention head scores, ...), in small HDF5 files documented in traces/ARTEFACTS.md.
// Reading validates before it allocates: every problem is a one-line kvsim::Error naming
// the file and the dataset or attribute.
#include <string>
#include <vector>

namespace kvsim {

struct ArtefactTensor {
  std::vector<long> shape;
  std::vector<float> data;  // row-major, finite
};

// Dataset `name` of `path`, of the given rank (float data of any HDF5 float type).
ArtefactTensor read_artefact_tensor(const std::string& path, const std::string& name, int rank);
// Numeric root attribute `name` of `path`.
double read_artefact_attribute(const std::string& path, const std::string& name);
// Whether `path` holds a dataset `name` (artefacts whose layout has variants, e.g. kvzap's).
bool artefact_has_dataset(const std::string& path, const std::string& name);
// A shape as "[a,b,c]", for messages.
std::string shape_text(const std::vector<long>& shape);

// Writes an artefact (tests, and anything that makes artefacts from C++): float32 datasets
// and numeric root attributes, replacing `path`.
void write_artefact(const std::string& path, const std::vector<std::pair<std::string, ArtefactTensor>>& tensors,
                    const std::vector<std::pair<std::string, double>>& attributes);

}  // namespace kvsim
