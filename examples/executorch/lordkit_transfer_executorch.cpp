// lordkit_transfer_executorch: run a lordkit export's ExecuTorch program (transfer.pte) from C++,
// on ExecuTorch's runtime and its XNNPACK delegate: no libtorch.
//
//   lordkit_transfer_executorch <export_dir | transfer.pte> <content> <class> <out>
//
// The same command line and image formats as examples/cpp (lordkit_io.hpp: PPM / PGM / .npy in,
// the output's extension chooses its format, .npy keeps float32). The program's "forward" method
// takes (content_image, class_image), both (B, C, H, W) float32 in [0, 1], and returns
// (B, C, H, W); lordkit's .pte files also carry the constant methods "lordkit_json" (metadata) and
// "max_batch". Every failure is one `error: ...` line on stderr and exit code 1 (2 for bad usage).

#include <executorch/extension/data_loader/file_data_loader.h>
#include <executorch/extension/memory_allocator/malloc_memory_allocator.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lordkit_io.hpp"

namespace {

using namespace lordkit_io;
using executorch::extension::FileDataLoader;
using executorch::extension::MallocMemoryAllocator;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::HierarchicalAllocator;
using executorch::runtime::MemoryManager;
using executorch::runtime::Method;
using executorch::runtime::Program;
using executorch::runtime::Span;
using IoError = lordkit_io::Error;

// ExecuTorch logs to stderr through its platform layer: CPU probing at info level on every load, and
// the reason for a failure at error level. Info lines are dropped; the first error line is kept for
// the one `error:` line this program prints.
std::string g_first_runtime_error;

void keep_errors(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
                 const char* message, size_t length) {
  if ((level != kError && level != kFatal) || !g_first_runtime_error.empty()) return;
  // The message may quote a file's first bytes: anything but printable ASCII is written as \xNN, so
  // that the line stays one line of text whatever the file held.
  std::string text;
  for (size_t i = 0; i < length; ++i) {
    const auto c = static_cast<unsigned char>(message[i]);
    if (c >= 0x20 && c < 0x7f) {
      text += static_cast<char>(c);
    } else if (c == '\n') {
      text += ' ';
    } else {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      text += hex;
    }
  }
  while (!text.empty() && text.back() == ' ') text.pop_back();
  const char* base = std::strrchr(filename, '/');
  g_first_runtime_error = text + " (" + (base ? base + 1 : filename) + ":" + std::to_string(line) + ")";
}

std::string runtime_failure(const std::string& what, Error code) {
  std::string msg = what + " (ExecuTorch error 0x" + [code] {
    char hex[8];
    std::snprintf(hex, sizeof hex, "%x", static_cast<unsigned>(code));
    return std::string(hex);
  }() + ")";
  if (!g_first_runtime_error.empty()) msg += ": " + g_first_runtime_error;
  return msg;
}

// A loaded method with the memory it plans into (sizes from the program, allocated here).
struct LoadedMethod {
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<Span<uint8_t>> spans;
  std::unique_ptr<HierarchicalAllocator> planned;
  MallocMemoryAllocator method_allocator, temp_allocator;
  std::unique_ptr<MemoryManager> memory;
  std::optional<Method> method;
};

std::unique_ptr<LoadedMethod> load_method(const Program& program, const char* name, const std::string& path) {
  auto meta = program.method_meta(name);
  if (!meta.ok()) throw IoError(runtime_failure(path + " has no method '" + name + "'", meta.error()));
  auto loaded = std::make_unique<LoadedMethod>();
  for (size_t i = 0; i < meta->num_memory_planned_buffers(); ++i) {
    loaded->buffers.emplace_back(static_cast<size_t>(meta->memory_planned_buffer_size(i).get()));
    loaded->spans.emplace_back(loaded->buffers.back().data(), loaded->buffers.back().size());
  }
  loaded->planned = std::make_unique<HierarchicalAllocator>(Span<Span<uint8_t>>(loaded->spans.data(), loaded->spans.size()));
  loaded->memory = std::make_unique<MemoryManager>(&loaded->method_allocator, loaded->planned.get(), &loaded->temp_allocator);
  auto method = program.load_method(name, loaded->memory.get());
  if (!method.ok()) throw IoError(runtime_failure("cannot load method '" + std::string(name) + "' of " + path, method.error()));
  loaded->method.emplace(std::move(method.get()));
  return loaded;
}

bool has_method(const Program& program, const std::string& name) {
  for (size_t i = 0; i < program.num_methods(); ++i) {
    auto method_name = program.get_method_name(i);
    if (method_name.ok() && name == method_name.get()) return true;
  }
  return false;
}

// The string a constant method returns ("" when the program has no such method).
std::string constant_string(const Program& program, const char* name, const std::string& path) {
  if (!has_method(program, name)) return "";
  auto loaded = load_method(program, name, path);
  if (loaded->method->execute() != Error::Ok || loaded->method->outputs_size() < 1) return "";
  const EValue out = loaded->method->get_output(0);
  return out.isString() ? std::string(out.toString()) : "";
}

int run(char** argv) {
  const std::string model_arg = argv[1], content_path = argv[2], class_path = argv[3], out_path = argv[4];
  check_output_type(out_path);
  ModelArg model = resolve_model(model_arg, "transfer.pte", "ExecuTorch (.pte)");
  const Image content = read_image(content_path, "content image");
  const Image klass = read_image(class_path, "class image");

  // Load the program (the file stays open; segments are read as methods need them).
  executorch::runtime::runtime_init();
  auto loader = FileDataLoader::from(model.path.c_str());
  if (!loader.ok()) throw IoError(runtime_failure("cannot open " + model.path, loader.error()));
  auto program = Program::load(&loader.get());
  if (!program.ok()) throw IoError(runtime_failure("cannot load ExecuTorch program " + model.path, program.error()));
  const std::string meta_json = constant_string(program.get(), "lordkit_json", model.path);
  complete_geometry(model, find_string_field(meta_json, "lordkit.model"), meta_json.empty() ? "" : meta_json,
                    content, content_path);
  check_image(content, model.geo, "content image", content_path);
  check_image(klass, model.geo, "class image", class_path);
  auto forward = load_method(program.get(), "forward", model.path);

  // Run the model: inputs are (1, C, H, W) tensors over this program's own buffers.
  const Geometry& geo = model.geo;
  std::vector<float> content_chw = to_chw(content), class_chw = to_chw(klass);
  const std::vector<executorch::aten::SizesType> shape{1, geo.channels, geo.img_size, geo.img_size};
  auto content_t = executorch::extension::make_tensor_ptr(shape, content_chw.data());
  auto class_t = executorch::extension::make_tensor_ptr(shape, class_chw.data());
  const auto t0 = std::chrono::steady_clock::now();
  Error status = forward->method->set_input(EValue(*content_t), 0);
  if (status == Error::Ok) status = forward->method->set_input(EValue(*class_t), 1);
  if (status != Error::Ok) throw IoError(runtime_failure("the model refused its inputs", status));
  status = forward->method->execute();
  if (status != Error::Ok) throw IoError(runtime_failure("the model failed", status));
  const double latency_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  const EValue out = forward->method->get_output(0);
  if (!out.isTensor()) throw IoError("the model's output is not a tensor");
  const auto& tensor = out.toTensor();
  if (tensor.dim() != 4 || tensor.size(0) != 1 || tensor.size(1) != geo.channels || tensor.size(2) != geo.img_size ||
      tensor.size(3) != geo.img_size || tensor.scalar_type() != executorch::aten::ScalarType::Float)
    throw IoError("the model's output is not float32 [1, " + std::to_string(geo.channels) + ", " +
                  std::to_string(geo.img_size) + ", " + std::to_string(geo.img_size) + "]");
  write_image(out_path, from_chw(tensor.const_data_ptr<float>(), geo));
  std::cout << "wrote " << out_path << " (" << geo.img_size << "x" << geo.img_size << "x" << geo.channels
            << "); forward took " << latency_ms << " ms\n";
  return 0;
}

const char kUsage[] = "usage: lordkit_transfer_executorch <export_dir | transfer.pte> <content> <class> <out>\n";

}  // namespace

int main(int argc, char** argv) {
  const int status = lordkit_io::check_command_line(argc, argv, kUsage);
  if (status >= 0) return status;
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(keep_errors, __FILE__));
  try {
    return run(argv);
  } catch (const std::exception& e) {
    std::cerr << "error: " << lordkit_io::first_line(e.what()) << "\n";
  }
  return 1;
}
