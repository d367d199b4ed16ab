// The one libtorch call tch does not wrap: a TorchScript module's buffers by name
// (BatchNorm's running statistics and the like), as live tensor handles sharing the
// module's storage. Built by build.rs with the `train` feature.
#include <torch/script.h>

#include <exception>

extern "C" {
// Calls `each(data, name, tensor)` for every buffer of `module` and its submodules, with a
// new tensor handle that the callee owns (a tch tensor); on a libtorch exception calls
// `fail(data, message)` instead and stops.
void microunify_named_buffers(void *module, void *data,
                              void (*each)(void *, const char *, void *),
                              void (*fail)(void *, const char *)) {
  try {
    auto *m = static_cast<torch::jit::Module *>(module);
    for (const auto &b : m->named_buffers(/*recurse=*/true)) {
      each(data, b.name.c_str(), new torch::Tensor(b.value));
    }
  } catch (const std::exception &e) {
    fail(data, e.what());
  }
}
}
