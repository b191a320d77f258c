// Runs an AOTInductor package (torch._inductor.aoti_compile_and_package of
// a torch.export'ed quantized model) on one float32 input and writes the
// output: the deployment path, with no Python. The package calls the
// torch_quant ops by name through the dispatcher; linking
// libtorch_quant_ops registers them.
//
//   run_aoti model.pt2 input.bin B T K output.bin
#include <iostream>
#include <string>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include "tensor_io.h"

int main(int argc, char** argv) {
  if (argc != 7) {
    std::cerr << "usage: run_aoti model.pt2 input.bin B T K output.bin\n";
    return 2;
  }
  try {
    const torch::Tensor x = read_tensor(argv[2], {std::stoll(argv[3]), std::stoll(argv[4]),
                                                  std::stoll(argv[5])}, torch::kFloat);
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    const std::vector<torch::Tensor> out = loader.run({x});
    write_tensor(argv[6], out.at(0));
    std::cout << "output " << out.at(0).sizes() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "run_aoti: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
