#include "roam/load/load_vector.h"

#include <limits>

namespace roam::load {

double LoadPerCpu(const LoadVector& v) {
  if (v.capacity_milli() == 0) return std::numeric_limits<double>::infinity();
  return static_cast<double>(v.load_milli()) / v.capacity_milli();
}

}  // namespace roam::load
