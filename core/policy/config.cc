#include "roam/policy/config.h"

#include <cmath>
#include <string>

namespace roam::policy {
namespace {

Status Refuse(const std::string& what) { return Error(Errc::kInvalidArgument, "policy: " + what); }

}  // namespace

Status Validate(const PolicyConfig& c) {
  if (c.max_info_age.count() <= 0) return Refuse("max_info_age must be positive");
  if (c.load_half_life.count() <= 0) return Refuse("load_half_life must be positive");
  if (!(c.placement_margin >= 0)) return Refuse("placement_margin must be >= 0");
  if (!(c.choice_spread >= 0)) return Refuse("choice_spread must be >= 0");
  if (!(c.hysteresis > 0)) return Refuse("hysteresis must be > 0 (0 lets moves ping-pong)");
  if (c.min_residence.count() < 0) return Refuse("min_residence must be >= 0");
  if (c.migration_fixed_cost.count() < 0) return Refuse("migration_fixed_cost must be >= 0");
  if (!(c.migration_bytes_per_second > 0) || std::isinf(c.migration_bytes_per_second)) {
    return Refuse("migration_bytes_per_second must be positive and finite");
  }
  if (!(c.age_factor >= 0)) return Refuse("age_factor must be >= 0");
  if (c.owner_idle_after.count() < 0) return Refuse("owner_idle_after must be >= 0");
  return Ok();
}

}  // namespace roam::policy
