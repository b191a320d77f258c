#include "weight_cache.h"

#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "../tensor_version.h"
#include "panels.h"

namespace torch_quant::cpu {
namespace {

struct Entry {
  TensorVersion version;
  std::shared_ptr<const PackedPanels> panels;
};

int64_t budget_bytes() {
  static const int64_t budget = [] {
    const char* env = std::getenv("TORCH_QUANT_WEIGHT_CACHE_MB");
    int64_t mb = 1024;
    if (env != nullptr && *env != '\0') {
      char* end = nullptr;
      const long long v = std::strtoll(env, &end, 10);
      if (end != env && *end == '\0' && v >= 0) mb = v;
    }
    return mb << 20;
  }();
  return budget;
}

std::mutex mu;
std::unordered_map<const c10::TensorImpl*, Entry> entries;
int64_t bytes = 0;

void erase(std::unordered_map<const c10::TensorImpl*, Entry>::iterator it) {
  bytes -= static_cast<int64_t>(it->second.panels->data.size());
  entries.erase(it);
}

// Drops the entries of weights that no longer exist.
void sweep() {
  for (auto it = entries.begin(); it != entries.end();) {
    auto next = std::next(it);
    if (it->second.version.expired()) erase(it);
    it = next;
  }
}

}  // namespace

std::shared_ptr<const PackedPanels> cached_panels(const at::Tensor& w) {
  if (!w.is_contiguous() || w.dim() != 2) return nullptr;
  std::optional<TensorVersion> version = TensorVersion::of(w);
  if (!version.has_value()) return nullptr;
  const int64_t n = w.size(0), k = w.size(1), size = panel_bytes(n, k);
  const c10::TensorImpl* key = TensorVersion::key(w);

  std::lock_guard<std::mutex> lock(mu);
  auto it = entries.find(key);
  if (it != entries.end()) {
    const Entry& e = it->second;
    // Current if nothing was written or swapped in since it was packed.
    if (e.version.current(w)) return e.panels->data.empty() ? nullptr : e.panels;
    erase(it);
  }
  sweep();  // a miss is rare: free the packs of weights that are gone
  if (bytes + size > budget_bytes()) return nullptr;
  auto panels = std::make_shared<PackedPanels>();
  panels->data.resize(static_cast<size_t>(size));
  if (!pack_panels(w.const_data_ptr<int8_t>(), k, n, k, panels->data.data())) {
    panels->data = {};  // remembered, so the weight is not scanned again
  }
  bytes += static_cast<int64_t>(panels->data.size());
  entries.emplace(key, Entry{std::move(*version), panels});
  return panels->data.empty() ? nullptr : panels;
}

void clear_weight_cache() {
  std::lock_guard<std::mutex> lock(mu);
  entries.clear();
  bytes = 0;
}

std::pair<int64_t, int64_t> weight_cache_info() {
  std::lock_guard<std::mutex> lock(mu);
  sweep();
  return {static_cast<int64_t>(entries.size()), bytes};
}

}  // namespace torch_quant::cpu
