// Raw little-endian tensor files shared with Python (numpy's tofile / fromfile):
// the examples read their inputs and write their outputs this way.
#pragma once

#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/torch.h>

inline torch::Tensor read_tensor(const std::string& path, std::vector<int64_t> shape,
                                 torch::ScalarType dtype) {
  torch::Tensor t = torch::empty(shape, torch::dtype(dtype));
  std::ifstream f(path, std::ios::binary);
  f.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  if (!f) throw std::runtime_error("cannot read " + std::to_string(t.nbytes()) + " bytes of " + path);
  return t;
}

inline void write_tensor(const std::string& path, const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous().cpu();
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
  if (!f) throw std::runtime_error("cannot write " + path);
}
