#include <ucp/api/ucp.h>
#include <uct/api/uct.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "roam/transport/probe.h"

namespace roam::transport {
namespace {

Error UcxError(ucs_status_t status, std::string_view what) {
  const Errc code = status == UCS_ERR_NO_MEMORY ? Errc::kResourceExhausted : Errc::kUnavailable;
  return MakeError(code, "ucx: {}: {}", what, ucs_status_string(status));
}

DeviceKind KindOf(uct_device_type_t type) {
  switch (type) {
    case UCT_DEVICE_TYPE_NET:
      return DeviceKind::kNetwork;
    case UCT_DEVICE_TYPE_SHM:
      return DeviceKind::kSharedMemory;
    case UCT_DEVICE_TYPE_ACC:
      return DeviceKind::kAccelerator;
    default:
      return DeviceKind::kLoopback;
  }
}

// Appends the transport resources of one memory domain. A domain that cannot
// be opened (a driver present without its device, say) contributes nothing:
// `ucx_info -d` skips it the same way.
void AddMdResources(uct_component_h component, const char* component_name, const char* md_name,
                    std::vector<TransportResource>& out) {
  uct_md_config_t* config = nullptr;
  if (uct_md_config_read(component, nullptr, nullptr, &config) != UCS_OK) return;
  uct_md_h md = nullptr;
  const ucs_status_t opened = uct_md_open(component, md_name, config, &md);
  uct_config_release(config);
  if (opened != UCS_OK) return;

  uct_tl_resource_desc_t* resources = nullptr;
  unsigned count = 0;
  if (uct_md_query_tl_resources(md, &resources, &count) == UCS_OK) {
    for (unsigned i = 0; i < count; ++i) {
      out.push_back(TransportResource{component_name, resources[i].tl_name, resources[i].dev_name,
                                      KindOf(resources[i].dev_type)});
    }
    uct_release_tl_resource_list(resources);
  }
  uct_md_close(md);
}

}  // namespace

std::string_view DeviceKindName(DeviceKind kind) {
  switch (kind) {
    case DeviceKind::kNetwork:
      return "network";
    case DeviceKind::kSharedMemory:
      return "shared-memory";
    case DeviceKind::kAccelerator:
      return "accelerator";
    case DeviceKind::kLoopback:
      return "loopback";
  }
  return "unknown";
}

bool BackendReport::HasTransport(std::string_view transport) const {
  return std::ranges::any_of(resources,
                             [transport](const auto& r) { return r.transport == transport; });
}

bool BackendReport::HasRdma() const {
  // UCX's "ib" component carries every verbs transport (rc_verbs, rc_mlx5,
  // dc_mlx5, ud_verbs, ud_mlx5), on InfiniBand and RoCE alike.
  return std::ranges::any_of(resources, [](const auto& r) {
    return r.component == "ib" && r.kind == DeviceKind::kNetwork;
  });
}

Result<BackendReport> ProbeUcx() {
  BackendReport report;
  report.backend = "ucx";
  report.version = ucp_get_version_string();

  uct_component_h* components = nullptr;
  unsigned num_components = 0;
  if (const ucs_status_t s = uct_query_components(&components, &num_components); s != UCS_OK) {
    return UcxError(s, "list components");
  }
  std::unique_ptr<uct_component_h, void (*)(uct_component_h*)> release(components,
                                                                       uct_release_component_list);

  for (unsigned c = 0; c < num_components; ++c) {
    uct_component_attr_t attr{};
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_NAME | UCT_COMPONENT_ATTR_FIELD_MD_RESOURCE_COUNT;
    if (const ucs_status_t s = uct_component_query(components[c], &attr); s != UCS_OK) {
      return UcxError(s, "query a component");
    }
    std::vector<uct_md_resource_desc_t> mds(attr.md_resource_count);
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_MD_RESOURCES;
    attr.md_resources = mds.data();
    if (const ucs_status_t s = uct_component_query(components[c], &attr); s != UCS_OK) {
      return UcxError(s, fmt::format("query the memory domains of component {}", attr.name));
    }
    for (const auto& md : mds)
      AddMdResources(components[c], attr.name, md.md_name, report.resources);
  }
  return report;
}

}  // namespace roam::transport
