// lordkit in the browser: class/content transfer with a lordkit export, run in the tab by onnxruntime-web.
// No framework, no bundler. Nothing leaves the tab: images are decoded, prepared and transferred here.
//
// The library part (openExport, prepareImage, transfer, parseNpy) gives the networks the inputs the
// Python runtime gives them (lordkit.runtime, lordkit.imaging.square_resize): the centred largest
// square, shrunk with OpenCV's INTER_AREA arithmetic, float32 NCHW in [0, 1], RGB or one grey channel.
// startPage() wires it to index.html.

import * as ort from './ort.webgpu.min.mjs';

const FORMAT = 'lordkit-export/1';
const NETWORKS = ['content_encoder', 'class_encoder', 'generator'];
const WORK_MAX_SIDE = 4096; // photos are worked on at most this size on their longer side, as in Python

export class LordkitWebError extends Error {}

// ---------------------------------------------------------------------------------------------
// The export: manifest, class bank, sessions.

async function fetchBytes(url, what) {
  let response;
  try {
    response = await fetch(url, {cache: 'no-cache'});
  } catch (e) {
    const hint = location.protocol === 'file:' ? ' (pages opened from file:// cannot read files: serve the export dir over http, e.g. python -m http.server)' : '';
    throw new LordkitWebError(`cannot fetch ${what} from ${url}${hint}`);
  }
  if (!response.ok) {
    throw new LordkitWebError(`the export is missing ${what} (${url} answered ${response.status}); copy the whole export dir again`);
  }
  return new Uint8Array(await response.arrayBuffer());
}

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

export function checkManifest(m) {
  // The fields the page reads, with the same ranges as lordkit/export_format.py's manifest_problem.
  if (m === null || typeof m !== 'object' || Array.isArray(m)) return 'the manifest must be a JSON object';
  if (m.format !== FORMAT) return `it has format ${JSON.stringify(m.format)}; this page reads ${FORMAT}`;
  for (const key of ['img_size', 'channels', 'content_dim', 'class_dim', 'class_names', 'models', 'class_bank', 'sha256']) {
    if (!(key in m)) return `it lacks ${key}`;
  }
  if (!Number.isInteger(m.img_size) || m.img_size < 8 || m.img_size > 4096) return `img_size must be an integer from 8 to 4096, got ${JSON.stringify(m.img_size)}`;
  if (m.channels !== 1 && m.channels !== 3) return `channels must be 1 or 3, got ${JSON.stringify(m.channels)}`;
  for (const key of ['content_dim', 'class_dim']) {
    if (!Number.isInteger(m[key]) || m[key] < 1 || m[key] > 65536) return `${key} must be an integer from 1 to 65536, got ${JSON.stringify(m[key])}`;
  }
  if (!Array.isArray(m.class_names) || !m.class_names.length || !m.class_names.every((n) => typeof n === 'string')) return 'class_names must be a non-empty list of strings';
  if (typeof m.models !== 'object' || m.models === null) return 'models must map network names to their files';
  for (const net of NETWORKS) {
    const files = m.models[net] && m.models[net].files;
    if (!files || typeof files !== 'object') return `models has no ${net} with files`;
    if (!files.onnx) return `${net} has no ONNX file (exported without --onnx?)`;
  }
  if (typeof m.sha256 !== 'object' || m.sha256 === null) return 'sha256 must map file names to hex digests';
  return null;
}

export function precisions(manifest) {
  // fp32 always; int8 when every network has its *.int8.onnx file (lordkit export --int8).
  const out = ['fp32'];
  if (NETWORKS.every((n) => manifest.models[n].files.onnx_int8)) out.push('int8');
  return out;
}

function modelFile(manifest, network, precision) {
  // As lordkit.runtime.Bundle.model_path: *.opt.onnx when present for fp32, *.int8.onnx for int8.
  const files = manifest.models[network].files;
  if (precision === 'int8') {
    if (!files.onnx_int8) throw new LordkitWebError('this export has no int8 files; re-export with --int8 or use fp32');
    return files.onnx_int8;
  }
  if (precision !== 'fp32') throw new LordkitWebError(`unknown precision ${precision}; use fp32 or int8`);
  return files.onnx_opt || files.onnx;
}

export function parseNpy(bytes, what = 'class bank') {
  // A float32 .npy file (format 1.0, 2.0 or 3.0, C order) -> {data: Float32Array, shape}.
  const bad = (why) => new LordkitWebError(`${what} is not a float32 .npy array: ${why}`);
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (bytes.length < 10 || !magic.every((b, i) => bytes[i] === b)) throw bad('no NUMPY header');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = (major === 1 ? 10 : 12) + headerLen;
  if (start > bytes.length) throw bad('truncated header');
  const header = new TextDecoder().decode(bytes.subarray(major === 1 ? 10 : 12, start));
  const descr = /'descr':\s*'([^']*)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw bad('unreadable header');
  if (descr[1] !== '<f4') throw bad(`dtype ${descr[1]}`);
  if (fortran[1] !== 'False') throw bad('Fortran order');
  const dims = shape[1].split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const count = dims.reduce((a, b) => a * b, 1);
  if (bytes.length - start < count * 4) throw bad(`${bytes.length - start} data bytes for shape (${dims.join(', ')})`);
  const data = new Float32Array(bytes.slice(start, start + count * 4).buffer);
  return {data, shape: dims};
}

export async function pickDevice(wanted = 'auto') {
  // WebGPU when the browser offers an adapter (and it was not ruled out), else WebAssembly.
  if (wanted === 'wasm') return 'wasm';
  if (navigator.gpu) {
    try {
      if (await navigator.gpu.requestAdapter()) return 'webgpu';
    } catch (e) { /* no adapter: WebAssembly */ }
  }
  if (wanted === 'webgpu') throw new LordkitWebError('this browser offers no WebGPU adapter; choose WebAssembly');
  return 'wasm';
}

export async function openExport(baseUrl, {precision = 'fp32', device = 'auto', verify = true} = {}) {
  // Manifest, class bank and one session per network of the export at baseUrl (ends with '/').
  const manifestUrl = new URL('manifest.json', baseUrl);
  const raw = await fetchBytes(manifestUrl, 'manifest.json');
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(raw));
  } catch (e) {
    throw new LordkitWebError(`export manifest ${manifestUrl} is not valid JSON: ${e.message}`);
  }
  const problem = checkManifest(manifest);
  if (problem) throw new LordkitWebError(`${manifestUrl}: ${problem}; re-export the model`);

  // Files are checked against the manifest's sha256 where the page can hash (secure contexts).
  const hashing = verify && typeof crypto !== 'undefined' && crypto.subtle;
  const load = async (name) => {
    if (!(name in manifest.sha256)) throw new LordkitWebError(`files disagree with the manifest: ${name} has no sha256 entry`);
    const bytes = await fetchBytes(new URL(name, baseUrl), name);
    if (hashing) {
      const got = await sha256Hex(bytes);
      const want = String(manifest.sha256[name]).toLowerCase();
      if (got !== want) {
        throw new LordkitWebError(`files disagree with the manifest: ${name} has sha256 ${got.slice(0, 12)}..., manifest.json says ${want.slice(0, 12)}...; copy or re-export the whole dir`);
      }
    }
    return bytes;
  };

  const bank = parseNpy(await load(manifest.class_bank), manifest.class_bank);
  if (bank.shape.length !== 2 || bank.shape[0] !== manifest.class_names.length || bank.shape[1] !== manifest.class_dim) {
    throw new LordkitWebError(`${manifest.class_bank} has shape (${bank.shape.join(', ')}), expected (${manifest.class_names.length}, ${manifest.class_dim})`);
  }

  const provider = await pickDevice(device);
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(navigator.hardwareConcurrency || 1, 8) : 1;
  const sessions = {};
  for (const net of NETWORKS) {
    const name = modelFile(manifest, net, precision);
    const bytes = await load(name);
    try {
      sessions[net] = await ort.InferenceSession.create(bytes, {executionProviders: [provider], graphOptimizationLevel: 'all'});
    } catch (e) {
      throw new LordkitWebError(`onnxruntime-web cannot open ${name}: ${String(e.message || e).split('\n')[0]}`);
    }
  }
  return {baseUrl: String(baseUrl), manifest, bank, sessions, precision, device: provider,
          threads: ort.env.wasm.numThreads, imgSize: manifest.img_size, channels: manifest.channels};
}

// ---------------------------------------------------------------------------------------------
// Images: decode, centre square, INTER_AREA resize, model layout.

function roundHalfEven(x) {
  // cvRound / saturate_cast<uchar>(float): nearest, ties to even.
  const r = Math.round(x);
  return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

function areaTable(ssize, dsize, scale) {
  // OpenCV's computeResizeAreaTab: (dst index, src index, weight) triples.
  const tab = [];
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale, fsx2 = fsx1 + scale;
    const cellWidth = Math.min(scale, ssize - fsx1);
    let sx1 = Math.ceil(fsx1), sx2 = Math.floor(fsx2);
    sx2 = Math.min(sx2, ssize - 1);
    sx1 = Math.min(sx1, sx2);
    if (sx1 - fsx1 > 1e-3) tab.push([dx, sx1 - 1, Math.fround((sx1 - fsx1) / cellWidth)]);
    for (let sx = sx1; sx < sx2; sx++) tab.push([dx, sx, Math.fround(1.0 / cellWidth)]);
    if (fsx2 - sx2 > 1e-3) tab.push([dx, sx2, Math.fround(Math.min(Math.min(fsx2 - sx2, 1.0), cellWidth) / cellWidth)]);
  }
  return tab;
}

export function resizeArea(src, sw, sh, cn, dw, dh) {
  // cv2.resize(..., INTER_AREA) of uint8 pixels (HWC) for shrinking: OpenCV's integer-scale fast path
  // (2x2 rounds half up, other factors round the float mean half to even) or its weighted general path.
  const dst = new Uint8ClampedArray(dw * dh * cn);
  const sx = sw / dw, sy = sh / dh;
  if (Number.isInteger(sx) && Number.isInteger(sy)) {
    const area = sx * sy, inv = Math.fround(1 / area);
    for (let y = 0; y < dh; y++) for (let x = 0; x < dw; x++) for (let c = 0; c < cn; c++) {
      let sum = 0;
      for (let j = 0; j < sy; j++) for (let i = 0; i < sx; i++) sum += src[((y * sy + j) * sw + x * sx + i) * cn + c];
      dst[(y * dw + x) * cn + c] = (sx === 2 && sy === 2) ? (sum + 2) >> 2 : roundHalfEven(Math.fround(sum * inv));
    }
    return dst;
  }
  const xtab = areaTable(sw, dw, sx), ytab = areaTable(sh, dh, sy);
  const buf = new Float32Array(dw * cn), sum = new Float32Array(dw * cn);
  let prevDy = ytab.length ? ytab[0][0] : 0;
  const flush = (dy) => {
    for (let k = 0; k < dw * cn; k++) dst[dy * dw * cn + k] = roundHalfEven(sum[k]);
    sum.fill(0);
  };
  for (const [dy, syi, beta] of ytab) {
    if (dy !== prevDy) { flush(prevDy); prevDy = dy; }
    buf.fill(0);
    const row = syi * sw * cn;
    for (const [dx, sxi, alpha] of xtab) {
      for (let c = 0; c < cn; c++) buf[dx * cn + c] = Math.fround(buf[dx * cn + c] + Math.fround(src[row + sxi * cn + c] * alpha));
    }
    for (let k = 0; k < dw * cn; k++) sum[k] = Math.fround(sum[k] + Math.fround(beta * buf[k]));
  }
  flush(prevDy);
  return dst;
}

export async function decodeImage(blob, name) {
  // A file -> {rgb: Uint8ClampedArray (H*W*3), width, height, png}; EXIF orientation applied,
  // transparency composited onto white, no colour management (OpenCV applies none).
  const head = new Uint8Array(await blob.slice(0, 8).arrayBuffer());
  const png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a].every((v, i) => head[i] === v);
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {colorSpaceConversion: 'none', premultiplyAlpha: 'none', imageOrientation: 'from-image'});
  } catch (e) {
    throw new LordkitWebError(`${name} is not an image file (the browser cannot decode it)`);
  }
  const {width, height} = bitmap;
  const draw = (background) => {
    const ctx = new OffscreenCanvas(width, height).getContext('2d', {willReadFrequently: true});
    if (background) { ctx.fillStyle = background; ctx.fillRect(0, 0, width, height); }
    ctx.drawImage(bitmap, 0, 0);
    return ctx.getImageData(0, 0, width, height).data;
  };
  let rgba = draw(null), transparent = false;
  for (let i = 3; i < rgba.length; i += 4) if (rgba[i] < 255) { transparent = true; break; }
  if (transparent) rgba = draw('#ffffff'); // composited onto white, as the Python runtime does
  bitmap.close();
  const rgb = new Uint8ClampedArray(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
  return {rgb, width, height, png: png && !transparent}; // a composited PNG is converted as a decoded array
}

export function toGrey(rgb, png) {
  // RGB -> one channel as the Python runtime reads colour files for a grey model: OpenCV's grey
  // decoder, which for PNG is libpng's rgb_to_gray (0.299, 0.587 in 1/32768, truncated; grey pixels
  // kept) and for other formats cvtColor's fixed-point weights (a JPEG's own luma differs by +-1).
  const n = rgb.length / 3, out = new Uint8ClampedArray(n);
  for (let i = 0; i < n; i++) {
    const r = rgb[3 * i], g = rgb[3 * i + 1], b = rgb[3 * i + 2];
    if (png) out[i] = (r === g && g === b) ? r : (r * 9797 + g * 19234 + b * 3737) >>> 15;
    else out[i] = (r * 4899 + g * 9617 + b * 1868 + 8192) >> 14;
  }
  return out;
}

export function squareResize({rgb, width, height, png = false}, size, channels, name = 'image') {
  // As lordkit.runtime: refuse images smaller than the model's input, convert to the model's channels,
  // shrink a photo above 4096 px, take the centred largest square, INTER_AREA to size x size.
  if (Math.min(width, height) < size) {
    throw new LordkitWebError(`${name} is ${width}x${height} px, smaller than this model's ${size}x${size} input; use an image at least ${size} px on its shorter side`);
  }
  const cn = channels;
  let w = width, h = height, px = cn === 1 ? toGrey(rgb, png) : rgb;
  if (Math.max(w, h) > WORK_MAX_SIDE) {
    const scale = Math.min(1, Math.max(WORK_MAX_SIDE / Math.max(w, h), size / Math.min(w, h)));
    const nw = Math.max(1, Math.round(w * scale)), nh = Math.max(1, Math.round(h * scale));
    px = resizeArea(px, w, h, cn, nw, nh); w = nw; h = nh;
  }
  const s = Math.min(w, h), top = Math.floor((h - s) / 2), left = Math.floor((w - s) / 2);
  let sq = new Uint8ClampedArray(s * s * cn);
  for (let y = 0; y < s; y++) sq.set(px.subarray(((top + y) * w + left) * cn, ((top + y) * w + left + s) * cn), y * s * cn);
  if (s !== size) sq = resizeArea(sq, s, s, cn, size, size);
  return sq;
}

export async function prepareImage(blob, ex, name = blob.name || 'image') {
  // A file -> the (S, S, C) uint8 crop the encoders get (as Uint8ClampedArray, HWC).
  return squareResize(await decodeImage(blob, name), ex.imgSize, ex.channels, name);
}

function toNCHW(crops, size, channels) {
  // (S, S, C) uint8 crops -> one (B, C, S, S) float32 batch in [0, 1], as to_model_input.
  const plane = size * size, out = new Float32Array(crops.length * channels * plane);
  crops.forEach((crop, b) => {
    for (let c = 0; c < channels; c++) {
      const base = (b * channels + c) * plane;
      for (let i = 0; i < plane; i++) out[base + i] = crop[i * channels + c] / 255;
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Transfer.

async function runChunks(session, feeds, n, batchSize, rowSizes, output) {
  // Run `session` on rows [0, n) of each feed in chunks; returns the concatenated output rows.
  const parts = [];
  for (let start = 0; start < n; start += batchSize) {
    const stop = Math.min(n, start + batchSize), inputs = {};
    for (const [name, [data, dims]] of Object.entries(feeds)) {
      const per = rowSizes[name];
      inputs[name] = new ort.Tensor('float32', data.subarray(start * per, stop * per), [stop - start, ...dims]);
    }
    const result = await session.run(inputs);
    parts.push(result[output].data);
    for (const t of Object.values(result)) if (t.dispose) t.dispose();
  }
  const total = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) { total.set(p, at); at += p.length; }
  return total;
}

export async function transfer(ex, contentCrops, classes, {batchSize = 8} = {}) {
  // contentCrops: N crops; classes: M items, each a class id (number) or a crop.
  // Returns {data: Float32Array (N, M, C, S, S), shape}; pair (i, j) = content i in class j.
  const {imgSize: s, channels: c, manifest} = ex, img = c * s * s;
  const n = contentCrops.length, m = classes.length;
  if (!n || !m) throw new LordkitWebError('choose at least one content image and one class');
  const contentCodes = await runChunks(ex.sessions.content_encoder, {image: [toNCHW(contentCrops, s, c), [c, s, s]]},
                                       n, batchSize, {image: img}, 'content_code');
  const classCodes = new Float32Array(m * manifest.class_dim);
  const photos = classes.map((k, j) => [k, j]).filter(([k]) => typeof k !== 'number');
  if (photos.length) {
    const codes = await runChunks(ex.sessions.class_encoder, {image: [toNCHW(photos.map(([k]) => k), s, c), [c, s, s]]},
                                  photos.length, batchSize, {image: img}, 'class_code');
    photos.forEach(([, j], r) => classCodes.set(codes.subarray(r * manifest.class_dim, (r + 1) * manifest.class_dim), j * manifest.class_dim));
  }
  classes.forEach((k, j) => {
    if (typeof k !== 'number') return;
    if (!Number.isInteger(k) || k < 0 || k >= ex.bank.shape[0]) throw new LordkitWebError(`class id ${k} is not in the class bank (0 to ${ex.bank.shape[0] - 1})`);
    classCodes.set(ex.bank.data.subarray(k * manifest.class_dim, (k + 1) * manifest.class_dim), j * manifest.class_dim);
  });
  // Pairs are content-major, as in the Python runtime: pair p = content p / M in class p % M.
  const cd = manifest.content_dim, kd = manifest.class_dim;
  const pc = new Float32Array(n * m * cd), pk = new Float32Array(n * m * kd);
  for (let p = 0; p < n * m; p++) {
    const i = Math.floor(p / m), j = p % m;
    pc.set(contentCodes.subarray(i * cd, (i + 1) * cd), p * cd);
    pk.set(classCodes.subarray(j * kd, (j + 1) * kd), p * kd);
  }
  const data = await runChunks(ex.sessions.generator, {content_code: [pc, [cd]], class_code: [pk, [kd]]},
                               n * m, batchSize, {content_code: cd, class_code: kd}, 'image');
  return {data, shape: [n, m, c, s, s]};
}

// ---------------------------------------------------------------------------------------------
// The page.

function drawTile(ctx, chw, channels, size, x, y, scale) {
  // One (C, S, S) float image (or an (S, S, C) uint8 crop when chw is a Uint8ClampedArray) at (x, y).
  const tile = new ImageData(size, size), plane = size * size, d = tile.data;
  const crop = chw instanceof Uint8ClampedArray;
  for (let i = 0; i < plane; i++) {
    for (let k = 0; k < 3; k++) {
      const c = channels === 1 ? 0 : k;
      const v = crop ? chw[i * channels + c] : Math.min(1, Math.max(0, chw[c * plane + i])) * 255 + 0.5;
      d[4 * i + k] = v;
    }
    d[4 * i + 3] = 255;
  }
  const tmp = new OffscreenCanvas(size, size);
  tmp.getContext('2d').putImageData(tile, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(tmp, x, y, size * scale, size * scale);
}

export function drawGrid(canvas, result, contentCrops, classTiles, channels) {
  // A row per class, a column per content; content crops on top, class photos on the left (as lordkit transfer --grid).
  const [n, m, , s] = result.shape, scale = Math.max(1, Math.floor(96 / s)), cell = s * scale, gap = 4;
  canvas.width = (n + 1) * (cell + gap);
  canvas.height = (m + 1) * (cell + gap);
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#f4f4f4';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  contentCrops.forEach((crop, i) => drawTile(ctx, crop, channels, s, (i + 1) * (cell + gap), 0, scale));
  const per = channels * s * s;
  for (let j = 0; j < m; j++) {
    const y = (j + 1) * (cell + gap);
    if (classTiles[j].crop) drawTile(ctx, classTiles[j].crop, channels, s, 0, y, scale);
    else {
      ctx.fillStyle = '#333';
      ctx.font = '12px sans-serif';
      ctx.fillText(classTiles[j].label.slice(0, 14), 4, y + cell / 2);
    }
    for (let i = 0; i < n; i++) drawTile(ctx, result.data.subarray((i * m + j) * per, (i * m + j + 1) * per), channels, s, (i + 1) * (cell + gap), y, scale);
  }
}

export function startPage(doc = document) {
  const $ = (id) => doc.getElementById(id);
  const state = {ex: null, contents: [], classPhotos: []};
  const params = new URLSearchParams(location.search);
  const exportUrl = new URL(params.get('export') || '../', location.href);
  if (!exportUrl.href.endsWith('/')) exportUrl.href += '/';
  const setState = (s) => { doc.body.dataset.state = s; };
  const showError = (e) => {
    const text = e instanceof LordkitWebError ? e.message : `unexpected error: ${String(e && e.message || e).split('\n')[0]}`;
    $('error').textContent = text;
    $('error').hidden = false;
    setState('error');
  };
  const clearError = () => { $('error').textContent = ''; $('error').hidden = true; };
  const status = (text) => { $('status').textContent = text; };

  async function open() {
    clearError();
    setState('loading');
    status(`opening ${exportUrl.href} ...`);
    try {
      state.ex = await openExport(exportUrl, {precision: $('precision').value, device: $('device').value});
    } catch (e) {
      state.ex = null;
      status('');
      showError(e);
      return;
    }
    const {manifest} = state.ex;
    $('model').textContent = `${manifest.model_name || 'model'}: ${manifest.img_size} px, ${manifest.channels === 1 ? 'grey' : 'RGB'}, ${manifest.class_names.length} classes`;
    $('face-note').hidden = !manifest.face_template;
    const select = $('class-bank');
    if (select.options.length !== manifest.class_names.length) {
      select.replaceChildren(...manifest.class_names.map((name, k) => new Option(`${k}: ${name}`, String(k), k === 0, k === 0)));
    }
    const precisionSelect = $('precision');
    const offered = precisions(manifest);
    for (const opt of precisionSelect.options) opt.disabled = !offered.includes(opt.value);
    status(`ready: ${state.ex.device === 'webgpu' ? 'WebGPU' : `WebAssembly, ${state.ex.threads} thread${state.ex.threads === 1 ? '' : 's'}`}, ${state.ex.precision}`);
    setState('ready');
  }

  async function run() {
    clearError();
    if (!state.ex) { showError(new LordkitWebError('the export is not open; see the message above')); return; }
    setState('running');
    try {
      const contentFiles = [...state.contents];
      if (!contentFiles.length) throw new LordkitWebError('choose or drop at least one content image');
      const crops = [];
      for (const f of contentFiles) crops.push(await prepareImage(f, state.ex));
      const classes = [], tiles = [];
      for (const f of state.classPhotos) {
        const crop = await prepareImage(f, state.ex);
        classes.push(crop);
        tiles.push({crop, label: f.name});
      }
      for (const opt of $('class-bank').selectedOptions) {
        const k = Number(opt.value);
        classes.push(k);
        tiles.push({crop: null, label: state.ex.manifest.class_names[k]});
      }
      const t0 = performance.now();
      const result = await transfer(state.ex, crops, classes, {batchSize: Number($('batch').value) || 8});
      const ms = performance.now() - t0;
      drawGrid($('grid'), result, crops, tiles, state.ex.channels);
      window.lordkitResult = {data: result.data, shape: result.shape, contentCrops: crops};
      status(`${result.shape[0]} x ${result.shape[1]} transfers in ${ms.toFixed(0)} ms on ${state.ex.device === 'webgpu' ? 'WebGPU' : 'WebAssembly'} (${state.ex.precision})`);
      setState('done');
    } catch (e) {
      showError(e);
    }
  }

  $('contents').addEventListener('change', (ev) => { state.contents = [...ev.target.files]; $('content-count').textContent = `${state.contents.length} chosen`; });
  $('class-photos').addEventListener('change', (ev) => { state.classPhotos = [...ev.target.files]; });
  const drop = $('drop');
  drop.addEventListener('dragover', (ev) => { ev.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (ev) => {
    ev.preventDefault();
    drop.classList.remove('over');
    state.contents = [...ev.dataTransfer.files];
    $('content-count').textContent = `${state.contents.length} chosen`;
  });
  $('precision').addEventListener('change', open);
  $('device').addEventListener('change', open);
  $('run').addEventListener('click', run);
  window.lordkit = {open, run, state, openExport, prepareImage, transfer, ort};
  return open();
}
