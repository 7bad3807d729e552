// lordkit_transfer_aoti: run a lordkit export's AOTInductor package (transfer.pt2) from C++.
//
//   lordkit_transfer_aoti <export_dir | transfer.pt2> <content> <class> <out>
//
// The same command line and image formats as examples/cpp (lordkit_io.hpp: PPM / PGM / .npy in,
// the output's extension chooses its format, .npy keeps float32). The package is compiled native code
// that libtorch loads with torch::inductor::AOTIModelPackageLoader: forward(content_image,
// class_image), both (B, C, H, W) float32 in [0, 1], returns (B, C, H, W). Every failure is one
// `error: ...` line on stderr and exit code 1 (2 for bad usage).

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>

#include "lordkit_io.hpp"

namespace {

using namespace lordkit_io;

std::string value_or_empty(const std::unordered_map<std::string, std::string>& map, const std::string& key) {
  const auto it = map.find(key);
  return it == map.end() ? "" : it->second;
}

torch::Tensor to_tensor(const Image& img) {
  return torch::from_blob(to_chw(img).data(), {1, img.channels, img.height, img.width}, torch::kFloat32).clone();
}

int run(char** argv) {
  const std::string model_arg = argv[1], content_path = argv[2], class_path = argv[3], out_path = argv[4];
  check_output_type(out_path);
  ModelArg model = resolve_model(model_arg, "transfer.pt2", "AOTInductor (.pt2)");
  const Image content = read_image(content_path, "content image");
  const Image klass = read_image(class_path, "class image");

  // Load the package: libtorch unpacks it to a temporary dir and loads its shared library.
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  try {
    loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(model.path);
  } catch (const std::exception& e) {
    throw Error("cannot load AOTInductor package " + model.path + ": " + first_line(e.what()));
  }
  const auto metadata = loader->get_metadata();
  complete_geometry(model, value_or_empty(metadata, "lordkit.model"), value_or_empty(metadata, "lordkit.manifest"),
                    content, content_path);
  check_image(content, model.geo, "content image", content_path);
  check_image(klass, model.geo, "class image", class_path);

  // Run the model.
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<torch::Tensor> outputs;
  {
    c10::InferenceMode guard;
    try {
      outputs = loader->run({to_tensor(content), to_tensor(klass)});
    } catch (const std::exception& e) {
      throw Error("the model failed: " + first_line(e.what()));
    }
  }
  const double latency_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  const Geometry& geo = model.geo;
  if (outputs.size() != 1 || outputs[0].dim() != 4 || outputs[0].size(0) != 1 || outputs[0].size(1) != geo.channels ||
      outputs[0].size(2) != geo.img_size || outputs[0].size(3) != geo.img_size)
    throw Error("the model returned " + std::to_string(outputs.size()) + " outputs, the first of shape " +
                (outputs.empty() ? std::string("none") : c10::str(outputs[0].sizes())) + "; expected one [1, " +
                std::to_string(geo.channels) + ", " + std::to_string(geo.img_size) + ", " +
                std::to_string(geo.img_size) + "]");
  const torch::Tensor out = outputs[0].to(torch::kCPU, torch::kFloat32).contiguous();
  write_image(out_path, from_chw(out.data_ptr<float>(), geo));
  std::cout << "wrote " << out_path << " (" << geo.img_size << "x" << geo.img_size << "x" << geo.channels
            << "); forward took " << latency_ms << " ms\n";
  return 0;
}

const char kUsage[] = "usage: lordkit_transfer_aoti <export_dir | transfer.pt2> <content> <class> <out>\n";

}  // namespace

int main(int argc, char** argv) {
  const int status = lordkit_io::check_command_line(argc, argv, kUsage);
  if (status >= 0) return status;
  try {
    return run(argv);
  } catch (const lordkit_io::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
  } catch (const c10::Error& e) {
    std::cerr << "error: " << lordkit_io::first_line(e.what_without_backtrace()) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << lordkit_io::first_line(e.what()) << "\n";
  }
  return 1;
}
