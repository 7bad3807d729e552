"""int8 copies of an export's ONNX networks: onnxruntime static quantization calibrated on images.

`quantize_export(export_dir, calibration)` writes `<network>.int8.onnx` beside the float32 files and
records them in manifest.json (files, sha256, the quantization settings, and a quality row per
network: PSNR of the int8 output against the float32 output on held-out images).

How (onnxruntime.quantization.quantize_static):
- the plain float32 `.onnx` is pre-processed (onnx shape inference + onnxruntime's basic graph
  optimisation) and quantized; Conv, Gemm and MatMul run in int8, everything else (nearest
  upsampling, AdaIN's statistics, activations, sigmoid) stays float32 between DequantizeLinear and
  QuantizeLinear;
- activation ranges are calibrated (MinMax) on the calibration images: the encoders and the
  transfer network see the images, the generator sees the codes the float32 encoders give for
  them (content of one image with the class code of another, as in transfer);
- defaults are what measured fastest on an AVX2 CPU without VNNI (docs/bench.md): QDQ format,
  uint8 activations, int8 weights with reduce_range (7-bit weights: no saturation in AVX2's
  u8 x s8 multiply-add), one scale per tensor.

Files are written under temporary names, renamed into place, and the manifest is replaced last
(atomically), so a failure leaves the export as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from lordkit.errors import LordkitError
from lordkit.export.onnxmeta import writing
from lordkit.export_format import NETWORKS

INT8_KEY = "onnx_int8"  # key of the int8 file in a network's manifest `files` (lordkit.export_format)
OP_TYPES = ("Conv", "Gemm", "MatMul")  # the MAC-heavy ops; the rest stays float32
FORMATS = ("qdq", "qoperator")


@dataclass
class _Feeds:
    calibration: list[dict[str, np.ndarray]]  # batches for the calibration reader
    holdout: list[dict[str, np.ndarray]]  # batches for the quality check


def smooth_noise_images(n: int, img_size: int, channels: int, seed: int = 0) -> np.ndarray:
    """(n, H, W, C) uint8 images of smooth random colour fields (low-resolution noise, bilinear-upsampled):
    photo-like statistics for calibrating a model that has no data at hand (e.g. a benchmark's random model)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, img_size, img_size, channels), np.uint8)
    for i in range(n):
        cells = int(rng.integers(2, 9))
        small = rng.random((cells, cells, channels), dtype=np.float32)
        big = cv2.resize(small, (img_size, img_size), interpolation=cv2.INTER_CUBIC).reshape(img_size, img_size, channels)
        big += rng.normal(0.0, 0.03, big.shape).astype(np.float32)  # a little texture
        out[i] = (np.clip(big, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out


def _calibration_array(calibration: Any, img_size: int, channels: int, limit: int, seed: int) -> np.ndarray:
    """uint8 (N, H, W, C) from an array or a lordkit Dataset; at most `limit` images (a seeded random subset)."""
    images = getattr(calibration, "images", calibration)  # lordkit.data.store.Dataset keeps them memory-mapped
    what = f"calibration data {getattr(calibration, 'path', '')}".strip()
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise LordkitError(f"{what} must be a uint8 (N, H, W, C) image array or a lordkit Dataset")
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise LordkitError(f"{what} must be uint8 (N, H, W, C) images, got {images.dtype} {tuple(images.shape)}")
    n, h, w, c = images.shape
    if (h, w, c) != (img_size, img_size, channels):
        raise LordkitError(f"{what} has {h}x{w}x{c} images; the export takes {img_size}x{img_size}x{channels}")
    if n < 2:
        raise LordkitError(f"{what} has {n} image(s); quantization needs at least 2 (calibration and held-out)")
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:limit]) if n > limit else np.arange(n)
    return np.ascontiguousarray(images[idx])


def _nchw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def _batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(arrays.values())))
    return [{k: v[i:i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size)]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds (re-iterable via rewind)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """onnxruntime.quantization logs advice through `logging` and its sessions warn on stderr: errors only."""
    import onnxruntime as ort

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        root.setLevel(level)
        ort.set_default_logger_severity(2)


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(sess, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def _feeds(export_dir: Path, files: dict[str, dict[str, str]], networks: Sequence[str], cal: np.ndarray,
           hold: np.ndarray, batch_size: int, threads: int | None) -> dict[str, _Feeds]:
    """Calibration and held-out inputs of every network; the generator's are the float32 encoders' codes."""
    cal_x, hold_x = _nchw(cal), _nchw(hold)
    # Pair each image with the class of the next one, as a transfer would.
    cal_y, hold_y = np.roll(cal_x, 1, axis=0), np.roll(hold_x, 1, axis=0)
    out: dict[str, _Feeds] = {}
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "generator" in networks:
        for enc, (x_cal, x_hold) in (("content_encoder", (cal_x, hold_x)), ("class_encoder", (cal_y, hold_y))):
            sess = _session(export_dir / files[enc]["onnx"], threads)
            codes[enc] = (_run(sess, _batches({"image": x_cal}, batch_size)),
                          _run(sess, _batches({"image": x_hold}, batch_size)))
    for network in networks:
        if network in ("content_encoder", "class_encoder"):
            c, h = {"image": cal_x}, {"image": hold_x}
        elif network == "transfer":
            c, h = {"content_image": cal_x, "class_image": cal_y}, {"content_image": hold_x, "class_image": hold_y}
        else:
            c = {"content_code": codes["content_encoder"][0], "class_code": codes["class_encoder"][0]}
            h = {"content_code": codes["content_encoder"][1], "class_code": codes["class_encoder"][1]}
        out[network] = _Feeds(_batches(c, batch_size), _batches(h, batch_size))
    return out


def psnr_db(test: np.ndarray, reference: np.ndarray, peak: float) -> float:
    mse = float(np.mean((test.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(peak**2 / mse)


def quality_row(network: str, int8_file: str, fp32_file: str, got: np.ndarray, ref: np.ndarray,
                backend: str = "onnxruntime-cpu") -> dict[str, Any]:
    """PSNR of the int8 output against float32: peak 1 for images (their value range), the float32
    outputs' range for codes; psnr_range_db always takes the float32 outputs' range (stricter when a
    model's images do not span [0, 1], e.g. an untrained one's); plus max abs and relative L2 error."""
    is_image = ref.ndim == 4
    spread = float(ref.max() - ref.min()) or 1.0
    peak = 1.0 if is_image else spread
    diff = got.astype(np.float64) - ref.astype(np.float64)
    return {"model": network, "file": int8_file, "reference": fp32_file, "backend": backend,
            "n_images": int(len(ref)), "psnr_db": psnr_db(got, ref, peak), "psnr_peak": peak,
            "psnr_range_db": psnr_db(got, ref, spread),
            "max_abs_err": float(np.abs(diff).max()),
            "rel_l2_err": float(np.linalg.norm(diff) / (np.linalg.norm(ref.astype(np.float64)) or 1.0))}


def _stamp(src: Path, dst: Path) -> None:
    """The int8 file carries the float32 file's lordkit metadata (format, network, version, manifest)."""
    import onnx

    from lordkit.export.onnxmeta import write_metadata

    write_metadata(dst, {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props})
    try:
        onnx.checker.check_model(str(dst))
    except onnx.checker.ValidationError as e:
        raise LordkitError(f"onnx.checker rejected {dst.name}: {str(e).splitlines()[0]}") from None


def check_format(quant_format: str) -> str:
    if quant_format not in FORMATS:
        raise LordkitError(f"unknown quantization format {quant_format!r}; use one of: {', '.join(FORMATS)}")
    return quant_format


def quantize_file(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], *, quant_format: str = "qdq",
                  per_channel: bool = False, reduce_range: bool = True, work_dir: Path | None = None) -> None:
    """Static int8 quantization of one ONNX file, calibrated on `feeds` (MinMax ranges)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_format(quant_format)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp, _quiet_ort():
        pre = Path(tmp) / "pre.onnx"
        # Symbolic shape inference is for transformers and cannot follow the generator's Resize: onnx's suffices.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(dst), _Reader(feeds),
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=list(OP_TYPES), per_channel=per_channel, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            # Only the inputs and outputs of OP_TYPES are collected, for all batches at once (onnxruntime
            # 1.32's CalibMaxIntermediateOutputs discards data instead of merging it: not used).
            calibrate_method=CalibrationMethod.MinMax)


def quantize_export(export_dir: str | os.PathLike, calibration: Any, models: Sequence[str] = NETWORKS, *,
                    quant_format: str = "qdq", per_channel: bool = False, reduce_range: bool = True,
                    n_calibration: int = 64, n_holdout: int = 16, batch_size: int = 4, seed: int = 0,
                    threads: int | None = None, force: bool = False, show: bool = False,
                    calibration_source: str | None = None, shown_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write `<network>.int8.onnx` for each of `models` into an export dir and record them in its
    manifest; returns the updated manifest.

    calibration: uint8 (N, H, W, C) images at the export's size, or a lordkit Dataset (images are
    drawn from it, seeded); `n_holdout` of them (at most a quarter) are kept apart for the quality
    rows and at most `n_calibration` of the rest calibrate. quant_format: "qdq" or "qoperator";
    per_channel: one weight scale per output channel; reduce_range: 7-bit weights (AVX2 without
    VNNI). batch_size: images per calibration batch. threads: onnxruntime threads of the quality
    check. force: replace existing int8 files. show: print the quality table on the console.
    calibration_source: a note for the manifest (e.g. the dataset name). shown_dir: the dir that
    error messages name (the export's final name while the exporter still builds it elsewhere).
    """
    from lordkit.export_format import MANIFEST, file_name, sha256_file
    from lordkit.fsutil import atomic_write_json, read_json, temp_file
    from lordkit.runtime.bundle import Bundle

    export_dir = Path(export_dir)
    shown = Path(shown_dir) if shown_dir is not None else export_dir
    models = list(dict.fromkeys(models))
    unknown = [m for m in models if m not in NETWORKS]
    if unknown or not models:
        raise LordkitError(f"unknown network {unknown[0] if unknown else None!r}; use one of: {', '.join(NETWORKS)}")
    check_format(quant_format)
    if n_holdout < 1 or n_calibration < 1 or batch_size < 1:
        raise LordkitError("n_calibration, n_holdout and batch_size must be >= 1")
    bundle = Bundle(export_dir, verify="none")  # format and files present; the sources are hashed below
    manifest = bundle.manifest
    files: dict[str, dict[str, str]] = {}
    for name in NETWORKS:
        entry = manifest["models"].get(name) or {}
        files[name] = dict(entry.get("files") or {})
    needed = set(models) | ({"content_encoder", "class_encoder"} if "generator" in models else set())
    for name in needed:
        if "onnx" not in files[name]:
            raise LordkitError(f"export {export_dir} has no float32 ONNX file for {name}; re-export with --onnx")
    bad = [files[n]["onnx"] for n in needed
           if sha256_file(export_dir / files[n]["onnx"]) != str(manifest["sha256"].get(files[n]["onnx"], "")).lower()]
    if bad:
        raise LordkitError(f"files disagree with the manifest: {bad[0]} does not have the sha256 manifest.json records")
    targets = {m: file_name(m, INT8_KEY) for m in models}
    existing = [t for t in targets.values() if (export_dir / t).exists() or t in manifest["sha256"]]
    if existing and not force:
        raise LordkitError(f"{export_dir / existing[0]} already exists; pass --force to replace the int8 files")

    cal, hold = _split(calibration, manifest, n_calibration, n_holdout, seed)
    feeds = _feeds(export_dir, files, models, cal, hold, batch_size, threads)

    quality: list[dict[str, Any]] = []
    written: dict[str, Path] = {}
    try:
        for network in models:
            src = export_dir / files[network]["onnx"]
            tmp = temp_file(export_dir / targets[network])  # a name the next command clears after a crash
            written[network] = tmp
            with writing(shown / targets[network]):  # a full disk (here or in the system temp dir): one line
                quantize_file(src, tmp, feeds[network].calibration, quant_format=quant_format,
                              per_channel=per_channel, reduce_range=reduce_range)
                _stamp(src, tmp)
            ref = _run(_session(src, threads), feeds[network].holdout)
            got = _run(_session(tmp, threads), feeds[network].holdout)
            quality.append(quality_row(network, targets[network], src.name, got, ref))
        # Every file passed: move them into place, then the manifest (last, atomically).
        for network, tmp in written.items():
            os.replace(tmp, export_dir / targets[network])
    finally:
        for tmp in written.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    import onnxruntime as ort

    manifest = read_json(export_dir / MANIFEST, "export manifest")
    for network, name in targets.items():
        manifest["models"][network].setdefault("files", {})[INT8_KEY] = name
        manifest["sha256"][name] = sha256_file(export_dir / name)
    manifest["int8"] = {
        "format": quant_format.upper() if quant_format == "qdq" else "QOperator", "activation_type": "uint8",
        "weight_type": "int8", "reduce_range": reduce_range, "per_channel": per_channel,
        "op_types": list(OP_TYPES), "calibrate_method": "MinMax", "onnxruntime": ort.__version__,
        "calibration": {"n_images": int(len(cal)), "n_holdout": int(len(hold)), "seed": seed,
                        "source": calibration_source or str(getattr(calibration, "path", "array"))},
    }
    manifest["quality"] = [q for q in manifest.get("quality") or [] if q.get("file") not in targets.values()] + quality
    with writing(shown / MANIFEST):
        atomic_write_json(export_dir / MANIFEST, manifest)
    if show:
        from lordkit.console import console

        console.print(quality_table(quality))
    return manifest


def _split(calibration: Any, manifest: dict[str, Any], n_calibration: int, n_holdout: int,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibration and held-out images (uint8 NHWC at the export's size), drawn seeded: at most
    `n_holdout` (and a quarter) held out, at most `n_calibration` of the rest calibrate."""
    img_size, channels = int(manifest["img_size"]), int(manifest["channels"])
    images = _calibration_array(calibration, img_size, channels, n_calibration + n_holdout, seed)
    n_hold = min(n_holdout, max(1, len(images) // 4))
    order = np.random.default_rng(seed + 1).permutation(len(images))
    return images[np.sort(order[n_hold:])], images[np.sort(order[:n_hold])]


def quantize_executorch(export_dir: str | os.PathLike, calibration: Any, model_dir: str | os.PathLike,
                        models: Sequence[str] = NETWORKS, *, n_calibration: int = 64, n_holdout: int = 16,
                        batch_size: int = 4, seed: int = 0, threads: int | None = None,
                        calibration_source: str | None = None,
                        shown_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write `<network>.int8.pte` (ExecuTorch's own int8 flow: XNNPACK quantizer, pt2e) for each of
    `models` into an export dir that has the float32 ONNX and .pte files, calibrated on the same
    images and inputs as `quantize_export`; records them in the manifest with a quality row each
    (against the float32 ONNX outputs on held-out images). Images out of an int8 program must stay
    within INT8_TOL (max abs) of float32 on those images, or nothing is recorded and LordkitError
    names the network. Returns the updated manifest. model_dir: the model the export was made from
    (ExecuTorch quantizes the eager modules)."""
    import torch

    from lordkit.export.executorch_export import INT8_TOL, export_executorch, load_executorch
    from lordkit.export_format import MANIFEST, NETWORK_IO, file_name, sha256_file
    from lordkit.fsutil import atomic_write_json, read_json
    from lordkit.modeldir import load_amortized
    from lordkit.models import eager_networks
    from lordkit.runtime.bundle import Bundle, onnx_metadata

    export_dir = Path(export_dir)
    shown = Path(shown_dir) if shown_dir is not None else export_dir
    manifest = Bundle(export_dir, verify="none").manifest
    files = {name: dict((manifest["models"].get(name) or {}).get("files") or {}) for name in NETWORKS}
    missing = [n for n in models if "executorch" not in files[n]]
    if missing:
        raise LordkitError(f"export {export_dir} has no ExecuTorch program for {missing[0]}; export with --executorch")
    cal, hold = _split(calibration, manifest, n_calibration, n_holdout, seed)
    feeds = _feeds(export_dir, files, models, cal, hold, batch_size, threads)
    nets = eager_networks(load_amortized(Path(model_dir)).eval())
    quality, written = [], {}
    for network in models:
        inputs = NETWORK_IO[network][0]
        batches = [tuple(torch.from_numpy(b[n]) for n in inputs) for b in feeds[network].calibration]
        example = tuple(torch.cat([x[:1], x[:1]]) for x in batches[0])  # batch 2: the batch axis stays dynamic
        max_batch = load_executorch(export_dir / files[network]["executorch"]).max_batch() or 8
        target = export_dir / file_name(network, "executorch_int8")
        with writing(shown / target.name):
            export_executorch(nets[network], example, target, quantize="int8", max_batch=max_batch,
                              metadata=onnx_metadata(export_dir / files[network]["onnx"]), calibration=batches)
        written[network] = target
        program = load_executorch(target)
        got = np.concatenate([program(*(torch.from_numpy(b[n]) for n in inputs)).numpy()
                              for b in feeds[network].holdout])
        ref = _run(_session(export_dir / files[network]["onnx"], threads), feeds[network].holdout)
        row = quality_row(network, target.name, files[network]["onnx"], got, ref, backend="executorch-cpu")
        quality.append(row)
        if ref.ndim == 4 and not row["max_abs_err"] < INT8_TOL:
            for path in written.values():
                path.unlink(missing_ok=True)
            raise LordkitError(f"{target.name}: int8 images are {row['max_abs_err']:.3g} from float32 on held-out "
                               f"images (bound {INT8_TOL:g}); keep the float32 .pte files")

    manifest = read_json(export_dir / MANIFEST, "export manifest")
    for network, path in written.items():
        manifest["models"][network]["files"]["executorch_int8"] = path.name
        manifest["sha256"][path.name] = sha256_file(path)
    manifest["executorch_int8"] = {
        "quantizer": "XNNPACKQuantizer, symmetric int8, weights per channel (torchao pt2e)",
        "calibration": {"n_images": int(len(cal)), "n_holdout": int(len(hold)), "seed": seed,
                        "source": calibration_source or str(getattr(calibration, "path", "array"))},
        "image_bound": INT8_TOL}
    names = {p.name for p in written.values()}
    manifest["quality"] = [q for q in manifest.get("quality") or [] if q.get("file") not in names] + quality
    with writing(shown / MANIFEST):
        atomic_write_json(export_dir / MANIFEST, manifest)
    return manifest


def quality_table(rows: Sequence[dict[str, Any]]):
    from rich.table import Table

    t = Table(title="int8 vs float32 on held-out images")
    for col in ("file", "images", "PSNR dB", "PSNR dB (output range)", "max abs err", "rel L2 err"):
        t.add_column(col, justify="left" if col == "file" else "right", no_wrap=True)
    for r in rows:
        t.add_row(r["file"], str(r["n_images"]), f"{r['psnr_db']:.1f}", f"{r['psnr_range_db']:.1f}",
                  f"{r['max_abs_err']:.3g}", f"{r['rel_l2_err']:.3g}")
    return t
