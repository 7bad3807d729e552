// lordkit_transfer_openvino: class/content transfer from a lordkit export's ONNX files with OpenVINO.
//
//   lordkit_transfer_openvino <export_dir> <content> <class> <out>
//
// The same command line and image formats as examples/cpp (lordkit_io.hpp: PPM / PGM / .npy in, the
// output's extension chooses its format, .npy keeps float32). OpenVINO reads the export's
// content_encoder.onnx, class_encoder.onnx and generator.onnx as they are (no conversion) and runs
// them on the CPU in float32 (INFERENCE_PRECISION_HINT f32: on CPUs with bf16 the plugin would
// otherwise compute in bf16): generator(content_encoder(content), class_encoder(class)).
// Every failure is one `error: ...` line on stderr and exit code 1 (2 for bad usage).

#include <openvino/frontend/manager.hpp>
#include <openvino/openvino.hpp>

#include <chrono>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "lordkit_io.hpp"

namespace {

using namespace lordkit_io;

// OpenVINO's messages open with "Exception from src/...cpp:NN:" and "Check '...' failed at" lines: keep
// the first line that says what went wrong (with the next one when it ends in a colon).
std::string ov_message(const std::string& text) {
  std::istringstream lines(text);
  std::string line, first, said;
  while (std::getline(lines, line)) {
    const auto start = line.find_first_not_of(" \t\r");
    if (start == std::string::npos) continue;
    line = line.substr(start, line.find_last_not_of(" \t\r") - start + 1);
    if (first.empty()) first = line;
    if (line.rfind("Exception from", 0) == 0 || line.rfind("Check '", 0) == 0) continue;
    said += said.empty() ? line : " " + line;
    if (said.back() != ':') return said;
  }
  return !said.empty() ? said : first.empty() ? "unknown OpenVINO error" : first;
}

// One network: the compiled model and its one infer request.
struct Network {
  ov::CompiledModel compiled;
  ov::InferRequest request;
};

Network compile(ov::Core& core, const std::string& path) {
  if (!is_file(path)) throw Error(path + " not found; is the export complete (lordkit export --onnx)?");
  try {
    // Read with the ONNX frontend alone: core.read_model would offer a bad file to every frontend in
    // turn (TensorFlow's logs its own parse errors on stderr).
    ov::frontend::FrontEndManager manager;
    const auto onnx = manager.load_by_framework("onnx");
    const std::shared_ptr<ov::Model> model = onnx->convert(onnx->load(path));
    Network net;
    net.compiled = core.compile_model(model, "CPU", ov::hint::inference_precision(ov::element::f32));
    net.request = net.compiled.create_infer_request();
    return net;
  } catch (const std::exception& e) {
    throw Error("OpenVINO cannot load " + path + ": " + ov_message(e.what()));
  }
}

void infer(Network& net, const std::string& what) {
  try {
    net.request.infer();
  } catch (const std::exception& e) {
    throw Error("the " + what + " failed: " + ov_message(e.what()));
  }
}

void set_input(Network& net, const std::string& name, const ov::Tensor& tensor, const std::string& file) {
  try {
    net.request.set_tensor(name, tensor);
  } catch (const std::exception& e) {
    throw Error(file + " has no input '" + name + "' of this shape; is it a lordkit export? (" +
                ov_message(e.what()) + ")");
  }
}

int run(char** argv) {
  const std::string export_dir = argv[1], content_path = argv[2], class_path = argv[3], out_path = argv[4];
  check_output_type(out_path);
  if (!is_directory(export_dir))
    throw Error("export dir " + export_dir + (is_file(export_dir) ? " is a file" : " not found") +
                "; give the export dir (this program runs its content_encoder, class_encoder and generator .onnx)");
  const ModelArg model = resolve_model(export_dir, "generator.onnx", "ONNX");  // manifest.json: img_size, channels
  const Geometry& geo = model.geo;
  const Image content = read_image(content_path, "content image");
  const Image klass = read_image(class_path, "class image");
  check_image(content, geo, "content image", content_path);
  check_image(klass, geo, "class image", class_path);

  ov::Core core;
  Network content_encoder = compile(core, export_dir + "/content_encoder.onnx");
  Network class_encoder = compile(core, export_dir + "/class_encoder.onnx");
  Network generator = compile(core, export_dir + "/generator.onnx");

  // Run the three networks; the codes go from the encoders' output tensors to the generator as they are.
  const ov::Shape shape{1, static_cast<size_t>(geo.channels), static_cast<size_t>(geo.img_size),
                        static_cast<size_t>(geo.img_size)};
  std::vector<float> content_chw = to_chw(content), class_chw = to_chw(klass);
  const auto t0 = std::chrono::steady_clock::now();
  set_input(content_encoder, "image", ov::Tensor(ov::element::f32, shape, content_chw.data()), "content_encoder.onnx");
  set_input(class_encoder, "image", ov::Tensor(ov::element::f32, shape, class_chw.data()), "class_encoder.onnx");
  infer(content_encoder, "content encoder");
  infer(class_encoder, "class encoder");
  set_input(generator, "content_code", content_encoder.request.get_output_tensor(0), "generator.onnx");
  set_input(generator, "class_code", class_encoder.request.get_output_tensor(0), "generator.onnx");
  infer(generator, "generator");
  const double latency_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  const ov::Tensor out = generator.request.get_output_tensor(0);
  if (out.get_element_type() != ov::element::f32 || out.get_shape() != shape)
    throw Error("the generator returned " + out.get_element_type().get_type_name() + " " +
                out.get_shape().to_string() + "; expected f32 " + shape.to_string());
  write_image(out_path, from_chw(out.data<const float>(), geo));
  std::cout << "wrote " << out_path << " (" << geo.img_size << "x" << geo.img_size << "x" << geo.channels
            << "); the three networks took " << latency_ms << " ms\n";
  return 0;
}

const char kUsage[] = "usage: lordkit_transfer_openvino <export_dir> <content> <class> <out>\n";

}  // namespace

int main(int argc, char** argv) {
  const int status = lordkit_io::check_command_line(argc, argv, kUsage);
  if (status >= 0) return status;
  try {
    return run(argv);
  } catch (const lordkit_io::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << ov_message(e.what()) << "\n";
  }
  return 1;
}
