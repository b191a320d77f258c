#include "checked_values.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <optional>
#include <unordered_map>

#include <ATen/ATen.h>

#include "checks.h"
#include "tensor_version.h"

#ifdef TORCH_QUANT_WITH_CUDA
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace torch_quant {
namespace {

struct Entry {
  TensorVersion version;
  bool scale_ok = false;           // every value finite and > 0, finite reciprocal
  std::optional<std::pair<int64_t, int64_t>> zp_bounds;  // [lo, hi] of the values
};

// Enough for every parameter tensor of a large model; past it, the entries
// of tensors that are gone are dropped, and if that frees nothing, all.
constexpr size_t kMaxEntries = 8192;

std::mutex mu;
std::unordered_map<const c10::TensorImpl*, Entry> entries;
std::atomic<int64_t> host_reads{0};

// Drops the entries of tensors that are gone. Needs mu.
void drop_expired() {
  for (auto it = entries.begin(); it != entries.end();) {
    it = it->second.version.expired() ? entries.erase(it) : std::next(it);
  }
}

// The entry for t's current contents, or nullptr. Needs mu.
Entry* find(const at::Tensor& t) {
  auto it = entries.find(TensorVersion::key(t));
  if (it == entries.end()) return nullptr;
  if (!it->second.version.current(t)) {
    entries.erase(it);
    return nullptr;
  }
  return &it->second;
}

// The entry for t's current contents, made if needed; nullptr when t cannot
// be remembered. Needs mu.
Entry* find_or_add(const at::Tensor& t) {
  if (Entry* e = find(t)) return e;
  std::optional<TensorVersion> version = TensorVersion::of(t);
  if (!version.has_value()) return nullptr;
  if (entries.size() >= kMaxEntries) {
    drop_expired();
    if (entries.size() >= kMaxEntries) entries.clear();
  }
  return &entries.emplace(TensorVersion::key(t), Entry{std::move(*version)}).first->second;
}

// Values cannot be copied to the host while the tensor's stream is being
// captured into a CUDA graph: say what to do instead of failing in the copy.
void check_not_capturing(const char* op, const at::Tensor& t, const char* name) {
#ifdef TORCH_QUANT_WITH_CUDA
  if (t.is_cuda()) {
    const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(t.device().index());
    // (cudaStreamIsCapturing itself: c10's wrapper of it is newer than torch 2.11)
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(stream.stream(), &status));
    TORCH_CHECK(status != cudaStreamCaptureStatusActive, op, ": the values of ",
                name, " must be checked once before a CUDA graph capture that uses them (they "
                "cannot be read during it): call the op with this tensor once before capturing. "
                "Parameters made by torch_quant ops need no check");
  }
#else
  (void)op, (void)t, (void)name;
#endif
}

}  // namespace

void check_scale_values_once(const char* op, const at::Tensor& scale, const char* name) {
  {
    std::lock_guard<std::mutex> lock(mu);
    const Entry* e = find(scale);
    if (e != nullptr && e->scale_ok) return;
  }
  check_not_capturing(op, scale, name);
  ++host_reads;
  checked_scale_values(op, scale, name);  // throws with the message of the CPU ops
  remember_valid_scale(scale);
}

std::pair<int64_t, int64_t> check_zero_point_values_once(const char* op,
                                                         const at::Tensor& zero_point,
                                                         QRange range, const char* name) {
  {
    std::lock_guard<std::mutex> lock(mu);
    const Entry* e = find(zero_point);
    if (e != nullptr && e->zp_bounds.has_value() && e->zp_bounds->first >= range.qmin &&
        e->zp_bounds->second <= range.qmax) {
      return *e->zp_bounds;
    }
  }
  // Not known to fit this range: read the values (again), so that an
  // offending one is named with its index.
  check_not_capturing(op, zero_point, name);
  ++host_reads;
  const at::Tensor z = checked_zero_point_values(op, zero_point, range, name);
  const int64_t* p = z.const_data_ptr<int64_t>();
  const int64_t n = z.numel();
  const std::pair<int64_t, int64_t> bounds =
      n == 0 ? std::pair<int64_t, int64_t>{0, 0}
             : std::pair<int64_t, int64_t>{*std::min_element(p, p + n),
                                           *std::max_element(p, p + n)};
  remember_zero_point_bounds(zero_point, bounds.first, bounds.second);
  return bounds;
}

void remember_valid_scale(const at::Tensor& scale) {
  std::lock_guard<std::mutex> lock(mu);
  if (Entry* e = find_or_add(scale)) e->scale_ok = true;
}

void remember_zero_point_bounds(const at::Tensor& zero_point, int64_t lo, int64_t hi) {
  std::lock_guard<std::mutex> lock(mu);
  if (Entry* e = find_or_add(zero_point)) e->zp_bounds = std::pair<int64_t, int64_t>{lo, hi};
}

void clear_checked_values() {
  std::lock_guard<std::mutex> lock(mu);
  entries.clear();
}

std::pair<int64_t, int64_t> checked_values_info() {
  std::lock_guard<std::mutex> lock(mu);
  drop_expired();
  return {static_cast<int64_t>(entries.size()), host_reads.load()};
}

}  // namespace torch_quant
