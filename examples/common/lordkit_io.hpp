// lordkit_io.hpp: the image, .npy and manifest reading and writing of the lordkit C++ examples.
//
// Header-only C++17 with no dependency but the standard library, shared by examples/aoti and
// examples/executorch (examples/cpp keeps its own copy of the same code). Images are binary PPM (P6,
// RGB) / PGM (P5, grey) with 8-bit samples, or .npy arrays (float32 in [0, 1] or uint8, shape
// (H, W, C) or (H, W)); outputs follow the output's extension (.npy keeps float32 exactly). The
// formats and rounding are documented in examples/cpp/README.md. Every failure is an Error whose
// message a program prints as one `error: ...` line.

#pragma once

#include <algorithm>
#include <cctype>
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

namespace lordkit_io {

// A failure with a message for the user; main() prints it as one `error: ...` line.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An 8-bit or float image in memory: row-major H x W x C floats in [0, 1].
struct Image {
  int height = 0, width = 0, channels = 0;
  std::vector<float> pixels;  // (H, W, C)
};

// What the model takes; 0 = not known (a model file without lordkit metadata).
struct Geometry {
  int img_size = 0, channels = 0;
  std::string source;  // where the numbers came from, for messages
};

inline std::string lower_extension(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const auto dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return "";
  std::string ext = path.substr(dot);
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return ext;
}

inline bool is_directory(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

inline bool is_file(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

inline std::string read_file(const std::string& path, const std::string& what) {
  if (is_directory(path)) throw Error(what + " " + path + " is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(what + " " + path + " not found or not readable");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error("cannot open " + path + " for writing");
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw Error("failed writing " + path);
}

inline std::string shape_str(const Image& img) {
  return std::to_string(img.height) + "x" + std::to_string(img.width) + "x" + std::to_string(img.channels);
}

// ---------------------------------------------------------------------------------------------
// Metadata: the two integers of manifest.json we need, without a JSON library.

// The non-negative integer value of `"key": N` in JSON text; also matches `\"key\": N` inside an
// escaped JSON string (the manifest copy that lordkit's model files carry in their metadata).
// Returns -1 when absent. Occurrences that are not followed by ':' (a string value) are skipped.
inline long find_int_field(const std::string& text, const std::string& key) {
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
inline std::string find_string_field(const std::string& text, const std::string& key) {
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

inline Geometry geometry_from_json(const std::string& text, const std::string& source) {
  const long img_size = find_int_field(text, "img_size");
  const long channels = find_int_field(text, "channels");
  if (img_size <= 0 || (channels != 1 && channels != 3))
    throw Error(source + " has no valid img_size and channels (1 or 3); is it a lordkit export?");
  return {static_cast<int>(img_size), static_cast<int>(channels), source};
}

// ---------------------------------------------------------------------------------------------
// PPM / PGM (binary, 8-bit).

inline Image read_pnm(const std::string& bytes, const std::string& path) {
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
inline uint8_t to_uint8(float x) {
  return static_cast<uint8_t>(std::min(std::max(x, 0.0f), 1.0f) * 255.0f + 0.5f);
}

inline std::string encode_pnm(const Image& img) {
  std::string out = (img.channels == 3 ? "P6\n" : "P5\n") + std::to_string(img.width) + " " +
                    std::to_string(img.height) + "\n255\n";
  const size_t header = out.size();
  out.resize(header + img.pixels.size());
  for (size_t k = 0; k < img.pixels.size(); ++k) out[header + k] = static_cast<char>(to_uint8(img.pixels[k]));
  return out;
}

// ---------------------------------------------------------------------------------------------
// .npy (format versions 1 to 3; little-endian float32 or uint8, C order).

inline constexpr char kNpyMagic[] = "\x93NUMPY";

// The text after `'key':` in a numpy header dict, up to the next ',' or ')' group end.
inline std::string npy_field(const std::string& header, const std::string& key, const std::string& path) {
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

inline Image read_npy(const std::string& bytes, const std::string& path) {
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
inline std::string encode_npy(const Image& img) {
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

inline Image read_image(const std::string& path, const std::string& what) {
  const std::string ext = lower_extension(path);
  if (ext != ".npy" && ext != ".ppm" && ext != ".pgm" && ext != ".pnm")
    throw Error(what + " " + path + ": unknown image type '" + ext + "' (use .ppm, .pgm or .npy)");
  if (!is_file(path) && !is_directory(path)) throw Error(what + " " + path + " not found");
  const std::string bytes = read_file(path, what);
  return ext == ".npy" ? read_npy(bytes, path) : read_pnm(bytes, path);
}

inline void write_image(const std::string& path, const Image& img) {
  const std::string ext = lower_extension(path);
  if (ext == ".npy") return write_file(path, encode_npy(img));
  if (ext == ".ppm" && img.channels != 3)
    throw Error("output " + path + ": the model makes 1-channel images; write .pgm or .npy");
  if (ext == ".pgm" && img.channels != 1)
    throw Error("output " + path + ": the model makes 3-channel images; write .ppm or .npy");
  if (ext == ".ppm" || ext == ".pgm" || ext == ".pnm") return write_file(path, encode_pnm(img));
  throw Error("output " + path + ": unknown image type '" + ext + "' (use .ppm, .pgm or .npy)");
}

inline void check_image(const Image& img, const Geometry& geo, const std::string& what, const std::string& path) {
  if (img.height != geo.img_size || img.width != geo.img_size || img.channels != geo.channels)
    throw Error(what + " " + path + " is " + shape_str(img) + "; the model takes " + std::to_string(geo.img_size) +
                "x" + std::to_string(geo.img_size) + "x" + std::to_string(geo.channels) + " (" + geo.source + ")");
}


// (H, W, C) floats -> (C, H, W) floats: one NCHW sample, the layout the networks take.
inline std::vector<float> to_chw(const Image& img) {
  std::vector<float> chw(img.pixels.size());
  const size_t plane = static_cast<size_t>(img.height) * img.width;
  for (size_t p = 0; p < plane; ++p)
    for (int c = 0; c < img.channels; ++c) chw[c * plane + p] = img.pixels[p * img.channels + c];
  return chw;
}

// One NCHW sample of the model's geometry -> an (H, W, C) image.
inline Image from_chw(const float* chw, const Geometry& geo) {
  Image img{geo.img_size, geo.img_size, geo.channels,
            std::vector<float>(static_cast<size_t>(geo.img_size) * geo.img_size * geo.channels)};
  const size_t plane = static_cast<size_t>(geo.img_size) * geo.img_size;
  for (size_t p = 0; p < plane; ++p)
    for (int c = 0; c < geo.channels; ++c) img.pixels[p * geo.channels + c] = chw[c * plane + p];
  return img;
}

// The model file of an export dir, or a model file given directly. For a dir, its manifest.json
// gives the geometry; for a file, geo stays unknown (img_size 0) and the program reads the file's
// own metadata. `file` is the name inside the export dir ("transfer.pt2"), `what` names the format.
struct ModelArg {
  std::string path;
  Geometry geo;
};

inline ModelArg resolve_model(const std::string& arg, const std::string& file, const std::string& what) {
  if (is_directory(arg)) {
    const std::string manifest = arg + "/manifest.json";
    if (!is_file(manifest)) throw Error(arg + " has no manifest.json; is it a lordkit export dir?");
    const std::string path = arg + "/" + file;
    if (!is_file(path)) throw Error(arg + " has no " + file + " (export it with the " + what + " format)");
    return {path, geometry_from_json(read_file(manifest, "manifest"), manifest)};
  }
  if (!is_file(arg)) throw Error("model " + arg + " not found (give an export dir or its " + file + ")");
  return {arg, Geometry{}};
}

// A model file's own metadata, when it has some: the network must be the transfer network, and its
// manifest copy gives the geometry. Without metadata the content image sets the size.
inline void complete_geometry(ModelArg& model, const std::string& network, const std::string& manifest_json,
                              const Image& content, const std::string& content_path) {
  if (!network.empty() && network != "transfer")
    throw Error(model.path + " is lordkit's " + network + " network; give the export dir or its transfer file");
  if (model.geo.img_size != 0) return;
  if (!manifest_json.empty()) {
    model.geo = geometry_from_json(manifest_json, model.path + " (its metadata)");
  } else {  // not a lordkit file: trust the content image and require the class image to match it
    if (content.height != content.width) throw Error("content image " + content_path + " is not square");
    model.geo = {content.height, content.channels, "taken from " + content_path};
  }
}

// Refuse an output type before the model runs: failing afterwards wastes the user's time.
inline void check_output_type(const std::string& out_path) {
  const std::string ext = lower_extension(out_path);
  if (ext != ".npy" && ext != ".ppm" && ext != ".pgm" && ext != ".pnm")
    throw Error("output " + out_path + ": unknown image type '" + ext + "' (use .ppm, .pgm or .npy)");
}

// The first line of a library's message, without a C++ backtrace.
inline std::string first_line(const std::string& text) {
  const auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

// The .npy code copies little-endian bytes as they are.
inline bool little_endian_host() {
  const uint16_t probe = 1;
  return *reinterpret_cast<const uint8_t*>(&probe) == 1;
}

// What every program's usage says of its files, after its own first line.
constexpr const char kFormats[] =
    "  images: .ppm (P6) / .pgm (P5) 8-bit, or .npy float32 in [0, 1] / uint8, (H, W, C) or (H, W)\n"
    "  the output format follows <out>'s extension; .npy keeps float32\n";

// The command line every program shares, `<model> <content> <class> <out>`: the exit status when the
// program must stop here (0 after -h / --help, 2 with the usage on a wrong argument count, 1 on a
// big-endian host), or -1 when it goes on. `usage` is the program's first line.
inline int check_command_line(int argc, char** argv, const char* usage) {
  if (argc == 2 && (std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0)) {
    std::cout << usage << kFormats;
    return 0;
  }
  if (argc != 5) {
    std::cerr << usage << kFormats;
    return 2;
  }
  if (!little_endian_host()) {
    std::cerr << "error: this build supports little-endian hosts only\n";
    return 1;
  }
  return -1;
}

}  // namespace lordkit_io
