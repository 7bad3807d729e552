/* lordkit_transfer_openvino_c: the C++ program of this directory in C, on OpenVINO's C API.
 *
 *   lordkit_transfer_openvino_c <export_dir> <content> <class> <out>
 *
 * The same command line, image formats (binary PPM / PGM 8-bit, .npy float32 in [0, 1] or uint8 of
 * shape (H, W, C) or (H, W); output by extension, .npy keeps float32) and rounding as
 * examples/cpp. Runs content_encoder.onnx, class_encoder.onnx and generator.onnx of the export on
 * the CPU in float32. Every failure is one `error: ...` line on stderr and exit code 1 (2: usage).
 */

#include <openvino/c/openvino.h>

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
  int height, width, channels;
  float* pixels; /* (H, W, C) in [0, 1] */
} image_t;

static void die(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  fputs("error: ", stderr);
  vfprintf(stderr, fmt, args);
  fputc('\n', stderr);
  va_end(args);
  exit(1);
}

/* OpenVINO's last message on one line, without its "Exception from src/...:" and "Check '...' failed at"
 * lines: the first line that says what (with the next one when it ends in a colon). */
static const char* ov_message(void) {
  static char said[1024];
  const char* text = ov_get_last_err_msg();
  const char* p = text ? text : "";
  size_t len = 0;
  said[0] = '\0';
  while (*p) {
    const char* end = strchr(p, '\n');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    while (n && (*p == ' ' || *p == '\t')) ++p, --n;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\r')) --n;
    if (n && strncmp(p, "Exception from", 14) != 0 && strncmp(p, "Check '", 7) != 0 && len + n + 2 < sizeof said) {
      len += snprintf(said + len, sizeof said - len, "%s%.*s", len ? " " : "", (int)n, p);
      if (said[len - 1] != ':') return said;
    }
    if (!end) break;
    p = end + 1;
  }
  return len ? said : "unknown OpenVINO error";
}

#define OV_CHECK(call, ...)                                  \
  do {                                                       \
    if ((call) != OK) {                                      \
      char what_[4608];                                      \
      snprintf(what_, sizeof what_, __VA_ARGS__);            \
      die("%s: %s", what_, ov_message());                    \
    }                                                        \
  } while (0)

static const char* extension(const char* path) {
  const char* dot = strrchr(path, '.');
  const char* slash = strrchr(path, '/');
  return (dot && (!slash || dot > slash)) ? dot : "";
}

static int ext_is(const char* path, const char* ext) { return strcasecmp(extension(path), ext) == 0; }

static int is_dir(const char* path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static char* read_all(const char* path, const char* what, size_t* size) {
  if (is_dir(path)) die("%s %s is a directory, not a file", what, path);
  FILE* f = fopen(path, "rb");
  if (!f) die("%s %s not found or not readable", what, path);
  size_t cap = 1 << 16, n = 0, got;
  char* buf = malloc(cap + 1);
  while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) buf = realloc(buf, (cap *= 2) + 1);
  }
  fclose(f);
  if (!buf) die("out of memory reading %s", path);
  buf[n] = '\0';
  *size = n;
  return buf;
}

/* ---- PPM / PGM (binary, 8-bit) ---- */

static long pnm_int(const char* b, size_t size, size_t* i, const char* path) {
  for (;;) {
    while (*i < size && isspace((unsigned char)b[*i])) ++*i;
    if (*i < size && b[*i] == '#') {
      while (*i < size && b[*i] != '\n') ++*i;
      continue;
    }
    break;
  }
  if (*i >= size || !isdigit((unsigned char)b[*i])) die("%s: bad PNM header", path);
  long v = 0;
  while (*i < size && isdigit((unsigned char)b[*i]) && v < 1000000) v = v * 10 + (b[(*i)++] - '0');
  return v;
}

static image_t read_pnm(const char* b, size_t size, const char* path) {
  if (size < 2 || b[0] != 'P' || (b[1] != '5' && b[1] != '6')) die("%s is not a binary PPM (P6) or PGM (P5) file", path);
  image_t img = {0, 0, b[1] == '6' ? 3 : 1, NULL};
  size_t i = 2;
  const long w = pnm_int(b, size, &i, path), h = pnm_int(b, size, &i, path), maxval = pnm_int(b, size, &i, path);
  if (w <= 0 || h <= 0 || w > 65535 || h > 65535) die("%s: bad PNM size %ldx%ld", path, w, h);
  if (maxval <= 0 || maxval > 255) die("%s: maxval %ld is not 8-bit (16-bit PNM is not supported)", path, maxval);
  if (i >= size || !isspace((unsigned char)b[i])) die("%s: bad PNM header", path);
  ++i;
  const size_t n = (size_t)w * h * img.channels;
  if (size - i < n) die("%s: truncated PNM data (%zu of %zu bytes)", path, size - i, n);
  img.height = (int)h, img.width = (int)w;
  img.pixels = malloc(n * sizeof(float));
  for (size_t k = 0; k < n; ++k) {
    const float v = (float)(unsigned char)b[i + k] / (float)maxval; /* as numpy's u8.astype(np.float32) / 255 */
    img.pixels[k] = v > 1.0f ? 1.0f : v;
  }
  return img;
}

/* ---- .npy (versions 1 to 3, little-endian float32 or uint8, C order) ---- */

static image_t read_npy(const char* b, size_t size, const char* path) {
  if (size < 10 || memcmp(b, "\x93NUMPY", 6) != 0) die("%s is not a .npy file", path);
  const unsigned char* u = (const unsigned char*)b;
  size_t hlen, off;
  if (u[6] == 1) hlen = u[8] | (u[9] << 8), off = 10;
  else if ((u[6] == 2 || u[6] == 3) && size >= 12) hlen = u[8] | (u[9] << 8) | (u[10] << 16) | ((size_t)u[11] << 24), off = 12;
  else die("%s: unsupported .npy format version %d", path, u[6]);
  if (size < off + hlen) die("%s: truncated .npy header", path);
  char* header = strndup(b + off, hlen);
  off += hlen;
  size_t item;
  if (strstr(header, "'descr': '<f4'")) item = 4;
  else if (strstr(header, "'descr': '|u1'") || strstr(header, "'descr': '<u1'")) item = 1;
  else die("%s: dtype is not supported (use float32 in [0, 1] or uint8)", path);
  if (!strstr(header, "'fortran_order': False")) die("%s: Fortran-order arrays are not supported (save a C-order array)", path);
  const char* s = strstr(header, "'shape': (");
  long dims[4] = {0, 0, 1, 0};
  int nd = 0;
  if (s) {
    for (s += 10; *s && *s != ')'; ++s) {
      if (isdigit((unsigned char)*s)) {
        long v = 0;
        while (isdigit((unsigned char)*s) && v < 1000000) v = v * 10 + (*s++ - '0');
        if (nd < 4) dims[nd] = v;
        ++nd;
        --s;
      }
    }
  }
  free(header);
  if ((nd != 2 && nd != 3) || dims[0] <= 0 || dims[1] <= 0 || (dims[2] != 1 && dims[2] != 3))
    die("%s: array shape is not (H, W, C) with C = 1 or 3, or (H, W)", path);
  const size_t n = (size_t)dims[0] * dims[1] * dims[2];
  if (size - off != n * item) die("%s: .npy data is %zu bytes, the shape needs %zu", path, size - off, n * item);
  image_t img = {(int)dims[0], (int)dims[1], (int)dims[2], malloc(n * sizeof(float))};
  if (item == 1) {
    for (size_t k = 0; k < n; ++k) img.pixels[k] = (float)u[off + k] / 255.0f;
  } else {
    memcpy(img.pixels, b + off, n * sizeof(float));
    for (size_t k = 0; k < n; ++k)
      if (!isfinite(img.pixels[k]) || img.pixels[k] < 0.0f || img.pixels[k] > 1.0f)
        die("%s: float pixels must be in [0, 1], found %g (divide 0..255 data by 255, or save uint8)", path,
            img.pixels[k]);
  }
  return img;
}

static int known_type(const char* path) {
  return ext_is(path, ".npy") || ext_is(path, ".ppm") || ext_is(path, ".pgm") || ext_is(path, ".pnm");
}

static image_t read_image(const char* path, const char* what) {
  if (!known_type(path)) die("%s %s: unknown image type '%s' (use .ppm, .pgm or .npy)", what, path, extension(path));
  size_t size;
  char* bytes = read_all(path, what, &size);
  image_t img = ext_is(path, ".npy") ? read_npy(bytes, size, path) : read_pnm(bytes, size, path);
  free(bytes);
  return img;
}

static unsigned char to_u8(float x) { /* as lordkit.runtime.to_uint8_image */
  return (unsigned char)((x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x) * 255.0f + 0.5f);
}

static void write_image(const char* path, const image_t* img) {
  const size_t n = (size_t)img->height * img->width * img->channels;
  if (!ext_is(path, ".npy")) {
    if (ext_is(path, ".ppm") && img->channels != 3) die("output %s: the model makes 1-channel images; write .pgm or .npy", path);
    if (ext_is(path, ".pgm") && img->channels != 1) die("output %s: the model makes 3-channel images; write .ppm or .npy", path);
  }
  FILE* f = fopen(path, "wb");
  if (!f) die("cannot open %s for writing", path);
  int ok = 1;
  if (ext_is(path, ".npy")) {
    char header[256];
    int len = snprintf(header, sizeof header, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d, %d), }",
                       img->height, img->width, img->channels);
    const int pad = (64 - (10 + len + 1) % 64) % 64; /* data starts at a multiple of 64 */
    memset(header + len, ' ', pad);
    header[len + pad] = '\n';
    len += pad + 1;
    const unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(len & 0xff), (unsigned char)(len >> 8)};
    ok = fwrite(pre, 1, 10, f) == 10 && fwrite(header, 1, len, f) == (size_t)len &&
         fwrite(img->pixels, sizeof(float), n, f) == n;
  } else {
    fprintf(f, "%s\n%d %d\n255\n", img->channels == 3 ? "P6" : "P5", img->width, img->height);
    for (size_t k = 0; k < n && ok; ++k) ok = fputc(to_u8(img->pixels[k]), f) != EOF;
  }
  if (fclose(f) != 0 || !ok) die("failed writing %s", path);
}

/* The non-negative integer of `"key": N` in manifest.json (-1 when absent). */
static long json_int(const char* text, const char* key) {
  char quoted[64];
  snprintf(quoted, sizeof quoted, "\"%s\"", key);
  for (const char* at = strstr(text, quoted); at; at = strstr(at + 1, quoted)) {
    const char* p = at + strlen(quoted);
    while (isspace((unsigned char)*p)) ++p;
    if (*p++ != ':') continue;
    while (isspace((unsigned char)*p)) ++p;
    if (!isdigit((unsigned char)*p)) continue;
    return strtol(p, NULL, 10);
  }
  return -1;
}

/* ---- the networks ---- */

typedef struct {
  ov_compiled_model_t* compiled;
  ov_infer_request_t* request;
} network_t;

static network_t compile(ov_core_t* core, const char* dir, const char* name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) die("%s not found; is the export complete (lordkit export --onnx)?", path);
  /* An ONNX file is a protobuf ModelProto whose first field is ir_version (tag byte 0x08). Checked here
   * because OpenVINO offers any other file to every frontend in turn, and TensorFlow's logs to stderr. */
  FILE* f = fopen(path, "rb");
  const int first = f ? fgetc(f) : EOF;
  if (f) fclose(f);
  if (first != 0x08) die("%s is not an ONNX file", path);
  ov_model_t* model = NULL;
  network_t net = {NULL, NULL};
  /* A file the ONNX frontend cannot parse goes on to the others, and TensorFlow's writes its parse
   * errors to stderr: keep them off it while reading (our own error line says what failed). */
  fflush(stderr);
  const int saved = dup(2), null_fd = open("/dev/null", O_WRONLY);
  if (saved >= 0 && null_fd >= 0) dup2(null_fd, 2);
  const ov_status_e read = ov_core_read_model(core, path, NULL, &model);
  if (saved >= 0 && null_fd >= 0) dup2(saved, 2);
  if (saved >= 0) close(saved);
  if (null_fd >= 0) close(null_fd);
  OV_CHECK(read, "OpenVINO cannot load %s", path);
  /* float32 compute: on CPUs with bf16 the plugin's default would be bf16. */
  OV_CHECK(ov_core_compile_model(core, model, "CPU", 2, &net.compiled, ov_property_key_hint_inference_precision, "f32"),
           "OpenVINO cannot load %s", path);
  OV_CHECK(ov_compiled_model_create_infer_request(net.compiled, &net.request), "OpenVINO cannot load %s", path);
  ov_model_free(model);
  return net;
}

static void set_input(network_t* net, const char* name, ov_tensor_t* tensor, const char* file) {
  OV_CHECK(ov_infer_request_set_tensor(net->request, name, tensor), "%s has no input '%s' of this shape; is it a lordkit export?",
           file, name);
}

static ov_tensor_t* image_tensor(const image_t* img, float* chw, ov_shape_t* shape) {
  const size_t plane = (size_t)img->height * img->width;
  for (size_t p = 0; p < plane; ++p)
    for (int c = 0; c < img->channels; ++c) chw[c * plane + p] = img->pixels[p * img->channels + c];
  const int64_t dims[4] = {1, img->channels, img->height, img->width};
  ov_tensor_t* tensor = NULL;
  OV_CHECK(ov_shape_create(4, dims, shape), "cannot make a shape");
  OV_CHECK(ov_tensor_create_from_host_ptr(F32, *shape, chw, &tensor), "cannot make a tensor");
  return tensor;
}

static const char kUsage[] =
    "usage: lordkit_transfer_openvino_c <export_dir> <content> <class> <out>\n"
    "  images: .ppm (P6) / .pgm (P5) 8-bit, or .npy float32 in [0, 1] / uint8, (H, W, C) or (H, W)\n"
    "  the output format follows <out>'s extension; .npy keeps float32\n";

int main(int argc, char** argv) {
  if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) return fputs(kUsage, stdout), 0;
  if (argc != 5) return fputs(kUsage, stderr), 2;
  const char *dir = argv[1], *content_path = argv[2], *class_path = argv[3], *out_path = argv[4];
  if (!known_type(out_path)) die("output %s: unknown image type '%s' (use .ppm, .pgm or .npy)", out_path, extension(out_path));
  if (!is_dir(dir)) die("export dir %s not found or not a directory; give the export dir", dir);
  char manifest_path[4096];
  snprintf(manifest_path, sizeof manifest_path, "%s/manifest.json", dir);
  struct stat st;
  if (stat(manifest_path, &st) != 0) die("%s has no manifest.json; is it a lordkit export dir?", dir);
  size_t size;
  char* manifest = read_all(manifest_path, "manifest", &size);
  const long img_size = json_int(manifest, "img_size"), channels = json_int(manifest, "channels");
  free(manifest);
  if (img_size <= 0 || (channels != 1 && channels != 3))
    die("%s has no valid img_size and channels (1 or 3); is it a lordkit export?", manifest_path);

  image_t content = read_image(content_path, "content image"), klass = read_image(class_path, "class image");
  const image_t* imgs[2] = {&content, &klass};
  const char* whats[2] = {"content image", "class image"};
  const char* paths[2] = {content_path, class_path};
  for (int k = 0; k < 2; ++k)
    if (imgs[k]->height != img_size || imgs[k]->width != img_size || imgs[k]->channels != channels)
      die("%s %s is %dx%dx%d; the model takes %ldx%ldx%ld (%s)", whats[k], paths[k], imgs[k]->height, imgs[k]->width,
          imgs[k]->channels, img_size, img_size, channels, manifest_path);

  ov_core_t* core = NULL;
  OV_CHECK(ov_core_create(&core), "OpenVINO cannot start");
  network_t content_encoder = compile(core, dir, "content_encoder.onnx");
  network_t class_encoder = compile(core, dir, "class_encoder.onnx");
  network_t generator = compile(core, dir, "generator.onnx");

  const size_t n = (size_t)img_size * img_size * channels;
  float *content_chw = malloc(n * sizeof(float)), *class_chw = malloc(n * sizeof(float));
  ov_shape_t content_shape, class_shape, out_shape;
  ov_tensor_t* content_in = image_tensor(&content, content_chw, &content_shape);
  ov_tensor_t* class_in = image_tensor(&klass, class_chw, &class_shape);
  ov_tensor_t *content_code = NULL, *class_code = NULL, *out = NULL;
  set_input(&content_encoder, "image", content_in, "content_encoder.onnx");
  set_input(&class_encoder, "image", class_in, "class_encoder.onnx");
  OV_CHECK(ov_infer_request_infer(content_encoder.request), "the content encoder failed");
  OV_CHECK(ov_infer_request_infer(class_encoder.request), "the class encoder failed");
  OV_CHECK(ov_infer_request_get_output_tensor_by_index(content_encoder.request, 0, &content_code), "no content code");
  OV_CHECK(ov_infer_request_get_output_tensor_by_index(class_encoder.request, 0, &class_code), "no class code");
  set_input(&generator, "content_code", content_code, "generator.onnx");
  set_input(&generator, "class_code", class_code, "generator.onnx");
  OV_CHECK(ov_infer_request_infer(generator.request), "the generator failed");
  OV_CHECK(ov_infer_request_get_output_tensor_by_index(generator.request, 0, &out), "the generator returned nothing");
  OV_CHECK(ov_tensor_get_shape(out, &out_shape), "the generator's output has no shape");
  if (out_shape.rank != 4 || out_shape.dims[0] != 1 || out_shape.dims[1] != channels || out_shape.dims[2] != img_size ||
      out_shape.dims[3] != img_size)
    die("the generator returned a tensor of another shape; expected [1, %ld, %ld, %ld]", channels, img_size, img_size);
  void* data = NULL;
  OV_CHECK(ov_tensor_data(out, &data), "cannot read the generator's output");

  /* (C, H, W) -> (H, W, C) */
  image_t result = {(int)img_size, (int)img_size, (int)channels, malloc(n * sizeof(float))};
  const size_t plane = (size_t)img_size * img_size;
  for (size_t p = 0; p < plane; ++p)
    for (int c = 0; c < channels; ++c) result.pixels[p * channels + c] = ((const float*)data)[c * plane + p];
  write_image(out_path, &result);
  printf("wrote %s (%ldx%ldx%ld)\n", out_path, img_size, img_size, channels);

  ov_shape_free(&content_shape), ov_shape_free(&class_shape), ov_shape_free(&out_shape);
  ov_tensor_free(content_in), ov_tensor_free(class_in), ov_tensor_free(content_code), ov_tensor_free(class_code);
  ov_tensor_free(out);
  network_t* nets[3] = {&content_encoder, &class_encoder, &generator};
  for (int k = 0; k < 3; ++k) ov_infer_request_free(nets[k]->request), ov_compiled_model_free(nets[k]->compiled);
  ov_core_free(core);
  free(content_chw), free(class_chw), free(content.pixels), free(klass.pixels), free(result.pixels);
  return 0;
}
