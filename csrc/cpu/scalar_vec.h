// The "vector" of the portable build: W = 1 tells row_kernels_impl.h to skip
// its vector loop, so the scalar loop (quant_math.h) does every element.
#pragma once

struct ScalarVec {
  static constexpr int W = 1;
  using F = float;
};
