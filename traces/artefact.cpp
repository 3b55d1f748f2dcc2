#include "traces/artefact.h"

#include <H5Cpp.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"

namespace kvsim {
namespace {

// Artefacts are small (at most layers x heads x d x d): refuse anything claiming more.
constexpr long kMaxElements = 1L << 28;

H5::H5File open_artefact(const std::string& path) {
  if (!std::filesystem::is_regular_file(path)) throw Error("artefact " + path + ": no such file");
  try {
    H5::Exception::dontPrint();
    return H5::H5File(path, H5F_ACC_RDONLY);
  } catch (const H5::Exception&) {
    throw Error("artefact " + path + ": not an HDF5 file, or damaged");
  }
}

}  // namespace

ArtefactTensor read_artefact_tensor(const std::string& path, const std::string& name, int rank) {
  const H5::H5File file = open_artefact(path);
  const std::string where = "artefact " + path + ": dataset '" + name + "'";
  try {
    if (!file.nameExists(name)) throw Error(where + " is missing");
    const H5::DataSet dataset = file.openDataSet(name);
    if (dataset.getTypeClass() != H5T_FLOAT) throw Error(where + " is not a float dataset");
    const H5::DataSpace space = dataset.getSpace();
    if (!space.isSimple() || space.getSimpleExtentNdims() != rank)
      throw Error(where + " must have " + std::to_string(rank) + " dimensions");
    std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
    space.getSimpleExtentDims(dims.data());
    ArtefactTensor t;
    long count = 1;
    for (hsize_t dim : dims) {
      if (dim == 0 || static_cast<long>(dim) > kMaxElements / count) throw Error(where + " has an empty or implausibly large shape");
      count *= static_cast<long>(dim);
      t.shape.push_back(static_cast<long>(dim));
    }
    t.data.resize(static_cast<std::size_t>(count));
    dataset.read(t.data.data(), H5::PredType::NATIVE_FLOAT);
    for (float x : t.data)
      if (!std::isfinite(x)) throw Error(where + " holds NaN or infinity");
    return t;
  } catch (const H5::Exception& e) {
    throw Error(where + " cannot be read (" + e.getDetailMsg() + ")");
  }
}

double read_artefact_attribute(const std::string& path, const std::string& name) {
  const H5::H5File file = open_artefact(path);
  const std::string where = "artefact " + path + ": attribute '" + name + "'";
  try {
    if (!file.attrExists(name)) throw Error(where + " is missing");
    const H5::Attribute attribute = file.openAttribute(name);
    const H5T_class_t type = attribute.getTypeClass();
    if ((type != H5T_INTEGER && type != H5T_FLOAT) || attribute.getSpace().getSimpleExtentNpoints() != 1)
      throw Error(where + " must be one number");
    double value = 0;
    attribute.read(H5::PredType::NATIVE_DOUBLE, &value);
    if (!std::isfinite(value)) throw Error(where + " is not finite");
    return value;
  } catch (const H5::Exception& e) {
    throw Error(where + " cannot be read (" + e.getDetailMsg() + ")");
  }
}

std::string shape_text(const std::vector<long>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

bool artefact_has_dataset(const std::string& path, const std::string& name) {
  const H5::H5File file = open_artefact(path);
  try {
    return file.nameExists(name) && file.childObjType(name) == H5O_TYPE_DATASET;
  } catch (const H5::Exception& e) {
    throw Error("artefact " + path + ": cannot look up dataset '" + name + "' (" + e.getDetailMsg() + ")");
  }
}

void write_artefact(const std::string& path, const std::vector<std::pair<std::string, ArtefactTensor>>& tensors,
                    const std::vector<std::pair<std::string, double>>& attributes) {
  try {
    H5::H5File file(path, H5F_ACC_TRUNC);
    for (const auto& [name, t] : tensors) {
      const std::vector<hsize_t> dims(t.shape.begin(), t.shape.end());
      const H5::DataSpace space(static_cast<int>(dims.size()), dims.data());
      file.createDataSet(name, H5::PredType::IEEE_F32LE, space).write(t.data.data(), H5::PredType::NATIVE_FLOAT);
    }
    for (const auto& [name, value] : attributes)
      file.createAttribute(name, H5::PredType::IEEE_F64LE, H5::DataSpace(H5S_SCALAR)).write(H5::PredType::NATIVE_DOUBLE, &value);
  } catch (const H5::Exception& e) {
    throw Error("cannot write artefact " + path + " (" + e.getDetailMsg() + ")");
  }
}

}  // namespace kvsim
