// lordkit_transfer: run a lordkit TorchScript transfer model from C++ (libtorch only).
//
//   lordkit_transfer <export_dir | transfer.pt> <content> <class> <out>
//
// Images are binary PPM (P6, RGB) / PGM (P5, grey) with 8-bit samples, or .npy arrays (float32 in
// [0, 1] or uint8, shape (H, W, C) or (H, W)); the output format follows the output's extension
// (.npy keeps the float32 result exactly, PPM / PGM round it to 8 bits). The model contract is in
// docs/export-format.md: forward(content_image, class_image), both (B, C, H, W) float32 in [0, 1],
// returns (B, C, H, W) in [0, 1]. Every failure is one `error: ...` line on stderr and exit code 1
// (2 for bad usage).

#include <torch/script.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <vector>

namespace {

// A failure with a message for the user; main() prints it as one `error: ...` line.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An 8-bit or float image in memory: row-major H x W x C floats in [0, 1].
struct Image {
  int height = 0, width = 0, channels = 0;
  std::vector<float> pixels;  // (H, W, C)
};

// What the model takes; 0 = not known (a bare .pt without lordkit metadata).
struct Geometry {
  int img_size = 0, channels = 0;
  std::string source;  // where the numbers came from, for messages
};

std::string lower_extension(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const auto dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return "";
  std::string ext = path.substr(dot);
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return ext;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string read_file(const std::string& path, const std::string& what) {
  if (is_directory(path)) throw Error(what + " " + path + " is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(what + " " + path + " not found or not readable");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error("cannot open " + path + " for writing");
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw Error("failed writing " + path);
}

std::string shape_str(const Image& img) {
  return std::to_string(img.height) + "x" + std::to_string(img.width) + "x" + std::to_string(img.channels);
}

// ---------------------------------------------------------------------------------------------
// Metadata: the two integers of manifest.json we need, without a JSON library.

// The non-negative integer value of `"key": N` in JSON text; also matches `\"key\": N` inside an
// escaped JSON string (the manifest copy that every .pt carries in its lordkit.json extra file).
// Returns -1 when absent. Occurrences that are not followed by ':' (a string value) are skipped.
long find_int_field(const std::string& text, const std::string& key) {
  const std::string quoted = "\"" + key;
  for (size_t at = text.find(quoted); at != std::string::npos; at = text.find(quoted, at + 1)) {
    size_t i = at + quoted.size();
    if (i < text.size() && text[i] == '\\') ++i;  // the escaped form \"key\"
    if (i >= text.size() || text[i] != '"') continue;
    ++i;
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i >= text.size() || text[i] != ':') continue;
    ++i;
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i >= text.size() || !std::isdigit(static_cast<unsigned char>(text[i]))) continue;
    long value = 0;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])) && value < 1000000)
      value = value * 10 + (text[i++] - '0');
    return value;
  }
  return -1;
}

// The string value of `"key": "value"` in JSON text (no escapes inside the value); "" when absent.
std::string find_string_field(const std::string& text, const std::string& key) {
  const std::string quoted = "\"" + key + "\"";
  for (size_t at = text.find(quoted); at != std::string::npos; at = text.find(quoted, at + 1)) {
    size_t i = at + quoted.size();
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i >= text.size() || text[i] != ':') continue;
    i = text.find('"', i);
    const size_t end = i == std::string::npos ? i : text.find('"', i + 1);
    if (end == std::string::npos) return "";
    return text.substr(i + 1, end - i - 1);
  }
  return "";
}

Geometry geometry_from_json(const std::string& text, const std::string& source) {
  const long img_size = find_int_field(text, "img_size");
  const long channels = find_int_field(text, "channels");
  if (img_size <= 0 || (channels != 1 && channels != 3))
    throw Error(source + " has no valid img_size and channels (1 or 3); is it a lordkit export?");
  return {static_cast<int>(img_size), static_cast<int>(channels), source};
}

// ---------------------------------------------------------------------------------------------
// PPM / PGM (binary, 8-bit).

Image read_pnm(const std::string& bytes, const std::string& path) {
  if (bytes.size() < 2 || bytes[0] != 'P' || (bytes[1] != '5' && bytes[1] != '6'))
    throw Error(path + " is not a binary PPM (P6) or PGM (P5) file");
  const int channels = bytes[1] == '6' ? 3 : 1;
  size_t i = 2;
  // Header: width, height, maxval, separated by whitespace and '#' comments.
  auto next_int = [&](const char* name) {
    for (;;) {
      while (i < bytes.size() && std::isspace(static_cast<unsigned char>(bytes[i]))) ++i;
      if (i < bytes.size() && bytes[i] == '#') {
        while (i < bytes.size() && bytes[i] != '\n') ++i;
        continue;
      }
      break;
    }
    if (i >= bytes.size() || !std::isdigit(static_cast<unsigned char>(bytes[i])))
      throw Error(path + ": bad PNM header (no " + name + ")");
    long value = 0;
    while (i < bytes.size() && std::isdigit(static_cast<unsigned char>(bytes[i])) && value < 1000000)
      value = value * 10 + (bytes[i++] - '0');
    return value;
  };
  const long width = next_int("width"), height = next_int("height"), maxval = next_int("maxval");
  if (width <= 0 || height <= 0 || width > 65535 || height > 65535)
    throw Error(path + ": bad PNM size " + std::to_string(width) + "x" + std::to_string(height));
  if (maxval <= 0 || maxval > 255)
    throw Error(path + ": maxval " + std::to_string(maxval) + " is not 8-bit (16-bit PNM is not supported)");
  if (i >= bytes.size() || !std::isspace(static_cast<unsigned char>(bytes[i])))
    throw Error(path + ": bad PNM header");
  ++i;  // exactly one whitespace byte before the samples
  const size_t n = static_cast<size_t>(width) * height * channels;
  if (bytes.size() - i < n)
    throw Error(path + ": truncated PNM data (" + std::to_string(bytes.size() - i) + " of " + std::to_string(n) +
                " bytes)");
  Image img{static_cast<int>(height), static_cast<int>(width), channels, std::vector<float>(n)};
  const auto* src = reinterpret_cast<const unsigned char*>(bytes.data() + i);
  // A float32 division, as numpy's `u8.astype(np.float32) / 255` (a multiply by 1/255 differs in the last bit).
  for (size_t k = 0; k < n; ++k)
    img.pixels[k] = std::min(static_cast<float>(src[k]) / static_cast<float>(maxval), 1.0f);
  return img;
}

// Same rounding as lordkit.runtime.to_uint8_image: clip to [0, 1], * 255, + 0.5, truncate.
uint8_t to_uint8(float x) {
  return static_cast<uint8_t>(std::min(std::max(x, 0.0f), 1.0f) * 255.0f + 0.5f);
}

std::string encode_pnm(const Image& img) {
  std::string out = (img.channels == 3 ? "P6\n" : "P5\n") + std::to_string(img.width) + " " +
                    std::to_string(img.height) + "\n255\n";
  const size_t header = out.size();
  out.resize(header + img.pixels.size());
  for (size_t k = 0; k < img.pixels.size(); ++k) out[header + k] = static_cast<char>(to_uint8(img.pixels[k]));
  return out;
}

// ---------------------------------------------------------------------------------------------
// .npy (format versions 1 to 3; little-endian float32 or uint8, C order).

const char kNpyMagic[] = "\x93NUMPY";

// The text after `'key':` in a numpy header dict, up to the next ',' or ')' group end.
std::string npy_field(const std::string& header, const std::string& key, const std::string& path) {
  const auto at = header.find("'" + key + "'");
  if (at == std::string::npos) throw Error(path + ": .npy header has no '" + key + "'");
  auto i = header.find(':', at);
  if (i == std::string::npos) throw Error(path + ": bad .npy header");
  ++i;
  while (i < header.size() && header[i] == ' ') ++i;
  size_t end = i;
  if (i < header.size() && header[i] == '(') {
    end = header.find(')', i);
    if (end == std::string::npos) throw Error(path + ": bad .npy shape");
    ++end;
  } else {
    while (end < header.size() && header[end] != ',' && header[end] != '}') ++end;
  }
  std::string value = header.substr(i, end - i);
  while (!value.empty() && value.back() == ' ') value.pop_back();
  return value;
}

Image read_npy(const std::string& bytes, const std::string& path) {
  if (bytes.size() < 10 || bytes.compare(0, 6, kNpyMagic, 6) != 0) throw Error(path + " is not a .npy file");
  const auto major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, offset = 0;
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  if (major == 1) {
    header_len = b[8] | (b[9] << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) throw Error(path + ": truncated .npy header");
    header_len = b[8] | (b[9] << 8) | (b[10] << 16) | (static_cast<size_t>(b[11]) << 24);
    offset = 12;
  } else {
    throw Error(path + ": unsupported .npy format version " + std::to_string(major));
  }
  if (bytes.size() < offset + header_len) throw Error(path + ": truncated .npy header");
  const std::string header = bytes.substr(offset, header_len);
  offset += header_len;

  const std::string descr = npy_field(header, "descr", path);
  const std::string order = npy_field(header, "fortran_order", path);
  const std::string shape = npy_field(header, "shape", path);
  size_t item_size;
  if (descr == "'<f4'") item_size = 4;
  else if (descr == "'|u1'" || descr == "'<u1'") item_size = 1;
  else throw Error(path + ": dtype " + descr + " is not supported (use float32 in [0, 1] or uint8)");
  if (order != "False") throw Error(path + ": Fortran-order arrays are not supported (save a C-order array)");

  // shape "(H, W, C)", "(H, W)" or "(H, W,)".
  std::vector<long> dims;
  for (size_t i = 1; i < shape.size();) {
    if (std::isdigit(static_cast<unsigned char>(shape[i]))) {
      long v = 0;
      while (i < shape.size() && std::isdigit(static_cast<unsigned char>(shape[i])) && v < 1000000)
        v = v * 10 + (shape[i++] - '0');
      dims.push_back(v);
    } else {
      ++i;
    }
  }
  if (dims.size() == 2) dims.push_back(1);
  if (dims.size() != 3 || dims[0] <= 0 || dims[1] <= 0 || (dims[2] != 1 && dims[2] != 3))
    throw Error(path + ": array shape " + shape + " is not (H, W, C) with C = 1 or 3, or (H, W)");
  const size_t n = static_cast<size_t>(dims[0]) * dims[1] * dims[2];
  if (bytes.size() - offset != n * item_size)
    throw Error(path + ": .npy data is " + std::to_string(bytes.size() - offset) + " bytes, shape " + shape +
                " needs " + std::to_string(n * item_size));

  Image img{static_cast<int>(dims[0]), static_cast<int>(dims[1]), static_cast<int>(dims[2]), std::vector<float>(n)};
  const char* data = bytes.data() + offset;
  if (item_size == 1) {
    for (size_t k = 0; k < n; ++k) img.pixels[k] = static_cast<float>(static_cast<unsigned char>(data[k])) / 255.0f;
  } else {
    std::memcpy(img.pixels.data(), data, n * sizeof(float));
    for (float v : img.pixels) {
      if (!std::isfinite(v) || v < 0.0f || v > 1.0f) {
        std::ostringstream msg;
        msg << path << ": float pixels must be in [0, 1], found " << v
            << " (divide 0..255 data by 255, or save uint8)";
        throw Error(msg.str());
      }
    }
  }
  return img;
}

// float32 (H, W, C), C order, version 1.0, header padded so the data starts at a multiple of 64.
std::string encode_npy(const Image& img) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(img.height) + ", " +
                       std::to_string(img.width) + ", " + std::to_string(img.channels) + "), }";
  const size_t unpadded = 10 + header.size() + 1;  // magic + version + length, header, '\n'
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::string out(kNpyMagic, 6);
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>((header.size() >> 8) & 0xff));
  out += header;
  const size_t at = out.size();
  out.resize(at + img.pixels.size() * sizeof(float));
  std::memcpy(&out[at], img.pixels.data(), img.pixels.size() * sizeof(float));
  return out;
}

// ---------------------------------------------------------------------------------------------

Image read_image(const std::string& path, const std::string& what) {
  const std::string ext = lower_extension(path);
  if (ext != ".npy" && ext != ".ppm" && ext != ".pgm" && ext != ".pnm")
    throw Error(what + " " + path + ": unknown image type '" + ext + "' (use .ppm, .pgm or .npy)");
  if (!is_file(path) && !is_directory(path)) throw Error(what + " " + path + " not found");
  const std::string bytes = read_file(path, what);
  return ext == ".npy" ? read_npy(bytes, path) : read_pnm(bytes, path);
}

void write_image(const std::string& path, const Image& img) {
  const std::string ext = lower_extension(path);
  if (ext == ".npy") return write_file(path, encode_npy(img));
  if (ext == ".ppm" && img.channels != 3)
    throw Error("output " + path + ": the model makes 1-channel images; write .pgm or .npy");
  if (ext == ".pgm" && img.channels != 1)
    throw Error("output " + path + ": the model makes 3-channel images; write .ppm or .npy");
  if (ext == ".ppm" || ext == ".pgm" || ext == ".pnm") return write_file(path, encode_pnm(img));
  throw Error("output " + path + ": unknown image type '" + ext + "' (use .ppm, .pgm or .npy)");
}

void check_image(const Image& img, const Geometry& geo, const std::string& what, const std::string& path) {
  if (img.height != geo.img_size || img.width != geo.img_size || img.channels != geo.channels)
    throw Error(what + " " + path + " is " + shape_str(img) + "; the model takes " + std::to_string(geo.img_size) +
                "x" + std::to_string(geo.img_size) + "x" + std::to_string(geo.channels) + " (" + geo.source + ")");
}

// (H, W, C) floats -> (1, C, H, W) tensor owning its memory.
torch::Tensor to_nchw(Image& img) {
  return torch::from_blob(img.pixels.data(), {img.height, img.width, img.channels}, torch::kFloat32)
      .permute({2, 0, 1})
      .unsqueeze(0)
      .contiguous();
}

Image from_nchw(const torch::Tensor& out, const Geometry& geo) {
  if (out.dim() != 4 || out.size(0) != 1 || out.size(1) != geo.channels || out.size(2) != geo.img_size ||
      out.size(3) != geo.img_size)
    throw Error("the model returned shape " + c10::str(out.sizes()) + ", expected [1, " +
                std::to_string(geo.channels) + ", " + std::to_string(geo.img_size) + ", " +
                std::to_string(geo.img_size) + "]");
  const torch::Tensor hwc = out.to(torch::kCPU, torch::kFloat32).squeeze(0).permute({1, 2, 0}).contiguous();
  Image img{geo.img_size, geo.img_size, geo.channels, std::vector<float>(hwc.numel())};
  std::memcpy(img.pixels.data(), hwc.data_ptr<float>(), img.pixels.size() * sizeof(float));
  return img;
}

// The first line of a libtorch message, without the C++ backtrace.
std::string first_line(const std::string& text) {
  const auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

int run(char** argv) {
  const std::string model_arg = argv[1], content_path = argv[2], class_path = argv[3], out_path = argv[4];
  // Check the output type first: failing after the model has run wastes the user's time.
  const std::string out_ext = lower_extension(out_path);
  if (out_ext != ".npy" && out_ext != ".ppm" && out_ext != ".pgm" && out_ext != ".pnm")
    throw Error("output " + out_path + ": unknown image type '" + out_ext + "' (use .ppm, .pgm or .npy)");

  // Resolve the model file and what it takes.
  std::string model_path = model_arg;
  Geometry geo;
  if (is_directory(model_arg)) {
    model_path = model_arg + "/transfer.pt";
    const std::string manifest = model_arg + "/manifest.json";
    if (!is_file(manifest)) throw Error(model_arg + " has no manifest.json; is it a lordkit export dir?");
    if (!is_file(model_path))
      throw Error(model_arg + " has no transfer.pt (it was exported with --no-torchscript)");
    geo = geometry_from_json(read_file(manifest, "manifest"), manifest);
  } else if (!is_file(model_arg)) {
    throw Error("model " + model_arg + " not found (give an export dir or its transfer.pt)");
  }

  Image content = read_image(content_path, "content image");
  Image klass = read_image(class_path, "class image");

  torch::jit::ExtraFilesMap extra{{"lordkit.json", ""}};
  torch::jit::Module model;
  try {
    model = torch::jit::load(model_path, torch::kCPU, extra);
  } catch (const c10::Error& e) {
    throw Error("cannot load TorchScript model " + model_path + ": " + first_line(e.what_without_backtrace()));
  }
  model.eval();
  // A lordkit .pt names its network in lordkit.json; the encoders and the generator take other inputs.
  const std::string network = find_string_field(extra["lordkit.json"], "lordkit.model");
  if (!network.empty() && network != "transfer")
    throw Error(model_path + " is lordkit's " + network + " network; give the export dir or its transfer.pt");
  if (geo.img_size == 0) {
    if (!extra["lordkit.json"].empty()) {
      geo = geometry_from_json(extra["lordkit.json"], model_path + " (lordkit.json)");
    } else {  // not a lordkit file: trust the content image and require the class image to match it
      geo = {content.height, content.channels, "taken from " + content_path};
      if (content.height != content.width) throw Error("content image " + content_path + " is not square");
    }
  }
  check_image(content, geo, "content image", content_path);
  check_image(klass, geo, "class image", class_path);

  // Run the model.
  const auto t0 = std::chrono::steady_clock::now();
  torch::Tensor out;
  {
    c10::InferenceMode guard;
    try {
      out = model.forward({to_nchw(content), to_nchw(klass)}).toTensor();  // (1, C, H, W)
    } catch (const c10::Error& e) {
      throw Error("the model failed: " + first_line(e.what_without_backtrace()));
    }
  }
  const double latency_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  write_image(out_path, from_nchw(out, geo));
  std::cout << "wrote " << out_path << " (" << geo.img_size << "x" << geo.img_size << "x" << geo.channels
            << "); forward took " << latency_ms << " ms (one call: includes TorchScript's first-run optimisation)\n";
  return 0;
}

const char kUsage[] =
    "usage: lordkit_transfer <export_dir | transfer.pt> <content> <class> <out>\n"
    "  images: .ppm (P6) / .pgm (P5) 8-bit, or .npy float32 in [0, 1] / uint8, (H, W, C) or (H, W)\n"
    "  the output format follows <out>'s extension; .npy keeps float32\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && (std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0)) {
    std::cout << kUsage;
    return 0;
  }
  if (argc != 5) {
    std::cerr << kUsage;
    return 2;
  }
  const uint16_t probe = 1;
  if (*reinterpret_cast<const uint8_t*>(&probe) != 1) {  // .npy I/O below copies little-endian bytes as is
    std::cerr << "error: this build supports little-endian hosts only\n";
    return 1;
  }
  try {
    return run(argv);
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << "\n";
  } catch (const c10::Error& e) {
    std::cerr << "error: " << first_line(e.what_without_backtrace()) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << first_line(e.what()) << "\n";
  }
  return 1;
}
