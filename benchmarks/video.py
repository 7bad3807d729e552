"""Video transfer: throughput against the runtime's batched images/s, face tracking against detecting on
every frame, and how still and how faithful the face alignment is over time.

    python benchmarks/video.py                 # the figures of docs/video.md (a few minutes on 2 cores)
    python benchmarks/video.py --frames 120    # shorter clips

(a) non-face: a 160x120 video through `transfer_video` at batch 32 vs `Transfer.transfer` on the same
    frames' model inputs (the runtime's batched images/s) on a random model of the reference size
    (LordConfig defaults at 64 px, exported by lordkit.bench.target.reference_export);
(b) face: the same model with a face template on a moving-astronaut video, tracking (detection every
    10 frames) vs detection on every frame (--detect-every 1), whole pipeline frames/s; with the
    export's float32 files and again with int8 files (`--precision int8`; the export quantized,
    calibrated on aligned crops of the clip's frames) unless --no-int8;
(c) jitter: one still photo, JPEG re-encoded for every frame (fresh noise each frame): RMS
    frame-to-frame motion of the crop's corners in image pixels, smoothed and raw; on two clips
    (the astronaut at 512 px, and the astronaut turned 10 degrees and shrunk to 70%) and two JPEG
    qualities;
(d) path: the astronaut moved along a known curve (up to ~3 px per frame): error of the smoothed
    crop centre's displacement against the true one (max and RMS, px), on the same two clips.
Needs torch (the random model) and scikit-image (the photo). Writes benchmarks/results/video-<time>.json
and, run as a script, appends the same figures as one line to benchmarks/results/video.jsonl
(benchmarks/_results.py; LORDKIT_RESULTS_DIR=DIR appends to DIR/video.jsonl instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CELEBA_TEMPLATE = [[0.37, 0.46], [0.63, 0.46], [0.5, 0.6], [0.4, 0.74], [0.6, 0.74]]
RATE = 25


def cpu_model() -> str:
    from lordkit.bench.machine import cpu_model as name

    return f"{name()}, {len(os.sched_getaffinity(0))} cores"


def build_export(work: Path) -> Path:
    """A seeded random model of the reference size (64 px) with a face template, exported."""
    from lordkit.bench.target import reference_config
    from lordkit.config import LordConfig
    from lordkit.export.exporter import export_model
    from lordkit.modeldir import write_random_model

    cfg = reference_config(64, 3)
    data = {"data_name": "random", "dataset_id": "celeba", "n_imgs": 1, "n_classes": 1, "class_names": ["c0"],
            "img_size": 64, "channels": 3, "content_factors": [], "face_template": CELEBA_TEMPLATE,
            "content_grid": None, "path": str(work / "no-data")}
    model = write_random_model(work / "model", LordConfig(model=cfg), seed=0, data=data, force=True)
    export_model(model, work / "export", onnx=True, torchscript=False, batch_sizes=(2,), show=False, progress=False)
    return work / "export"


def write_video(path: Path, frames, rate: int = RATE) -> Path:
    import av

    out = av.open(str(path), "w")
    v = None
    for i, img in enumerate(frames):
        if v is None:
            v = out.add_stream("libx264", rate=rate)
            v.width, v.height, v.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
            v.options = {"crf": "12"}
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        f.pts, f.time_base = i, Fraction(1, rate)
        for p in v.encode(f):
            out.mux(p)
    for p in v.encode():
        out.mux(p)
    out.close()
    return path


def moving_bar(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), np.uint8), (0, 0), 3)
    frames = []
    for i in range(n):
        img = background.copy()
        x = int(20 + 100 * (0.5 + 0.5 * np.sin(i / 10)))
        img[30:90, x:x + 20] = (230, 200, 60)
        frames.append(img)
    return frames


def clip_photo(name: str) -> np.ndarray:
    from skimage import data

    astro = data.astronaut()
    if name == "astronaut":
        return astro
    m = cv2.getRotationMatrix2D((256, 256), 10, 0.7)  # turned and shrunk: another geometry and face size
    return cv2.warpAffine(astro, m, (512, 512), borderMode=cv2.BORDER_REFLECT)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def path_offsets(n: int) -> np.ndarray:
    """(n, 2) known translation per frame: a Lissajous curve, peak speed about 3 px per frame."""
    t = np.arange(n) / RATE
    return np.stack([40 * np.sin(2 * np.pi * t / 4), 20 * np.sin(2 * np.pi * t / 3)], 1)


def shifted(img: np.ndarray, d: np.ndarray) -> np.ndarray:
    return cv2.warpAffine(img, np.array([[1, 0, d[0]], [0, 1, d[1]]], np.float64), img.shape[1::-1],
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def corners(m: np.ndarray, size: int) -> np.ndarray:
    from lordkit.faces import invert_transform, transform_points

    c = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    return transform_points(c, invert_transform(m))


def centre(m: np.ndarray, size: int) -> np.ndarray:
    return corners(m, size).mean(0)


def track(preparer, frames, smooth: bool = True):
    from lordkit.runtime.video import FaceTracker

    tracker = FaceTracker(preparer, smooth=smooth)
    out = []
    for i, f in enumerate(frames):
        found = tracker(f, i / RATE)
        out.append(found[0] if found else None)
    return out, tracker.n_detections


def nonface_throughput(export: Path, work: Path, n_frames: int) -> dict:
    """(a) Non-face video frames/s against the runtime's batched images/s on the same frames."""
    from lordkit.imaging import square_resize
    from lordkit.runtime import Transfer
    from lordkit.runtime.video import transfer_video, video_input

    t = Transfer(export, provider="cpu", batch_size=32, align=False, warn=None)
    frames = moving_bar(n_frames)
    src = write_video(work / "bar.mp4", frames)
    inputs = [square_resize(f, 64, 3) for f in frames]
    t.transfer(inputs[:64], [0])  # warm-up
    runtime = []
    for _ in range(3):
        t0 = time.perf_counter()
        t.transfer(inputs, [0])
        runtime.append(len(inputs) / (time.perf_counter() - t0))
    video = []
    for k in range(3):
        r = transfer_video(t, video_input(str(src)), t.class_codes([0]), [work / f"bar_out{k}.mp4"])
        video.append(r.frames_per_s)
    a = {"runtime_img_per_s": float(np.median(runtime)), "video_frames_per_s": float(np.median(video)),
         "stage_busy_s": r.stage_seconds}
    a["ratio"] = a["video_frames_per_s"] / a["runtime_img_per_s"]
    return a


def face_runs(t, src: Path, work: Path) -> dict:
    """Face video frames/s, tracking (detect every 10th frame) against detecting on every frame."""
    from lordkit.runtime.video import transfer_video, video_input

    out = {}
    for label, every in (("tracking", 10), ("detect_every_frame", 1)):
        runs = [transfer_video(t, video_input(str(src)), t.class_codes([0]), [work / f"face_{label}{k}.mp4"],
                               detect_every=every) for k in range(2)]
        out[label] = {"frames_per_s": float(np.median([r.frames_per_s for r in runs])),
                      "detections": runs[0].n_detections, "frames": runs[0].n_frames,
                      "stage_busy_s": runs[0].stage_seconds}
    out["ratio"] = out["tracking"]["frames_per_s"] / out["detect_every_frame"]["frames_per_s"]
    return out


def face_throughput(export: Path, work: Path, n_frames: int, int8: bool):
    """(b) Faces: tracking vs detecting on every frame, float32 files and (int8) the int8 ones.
    Returns the figures and the float32 Transfer (its preparer serves (c) and (d))."""
    from lordkit.runtime import Transfer

    astro = clip_photo("astronaut")
    face_frames = [cv2.resize(shifted(astro, d)[0:384, 64:448], (256, 256), interpolation=cv2.INTER_AREA)
                   for d in path_offsets(n_frames // 2)]
    src = write_video(work / "face.mp4", face_frames)
    tf = Transfer(export, provider="cpu", batch_size=32, warn=None)
    b = face_runs(tf, src, work)
    if int8:
        from lordkit.export.quantize import quantize_export

        if not (export / "generator.int8.onnx").exists():
            crops = np.stack([tf.prepare(f)[0].image for f in face_frames[::max(1, len(face_frames) // 32)]])
            quantize_export(export, crops, batch_size=8)
        b["int8"] = face_runs(Transfer(export, provider="cpu", batch_size=32, precision="int8", warn=None), src, work)
    return b, tf


def jitter_and_path(preparer, size: int, n: int) -> tuple[dict, dict]:
    """(c) Jitter on still photos with per-frame JPEG noise; (d) error following a known path."""
    c, d = {}, {}
    for clip in ("astronaut", "turned"):
        photo = clip_photo(clip)
        for quality in (90, 60):
            frames_c = [jpeg(photo, quality) if k % 2 == 0 else jpeg(jpeg(photo, quality + 5), quality)
                        for k in range(n)]  # alternate encodings: the noise changes every frame
            row = {}
            for smooth in (True, False):
                found, _ = track(preparer, frames_c, smooth)
                pts = np.stack([corners(f.matrix, size) for f in found if f is not None])
                step = np.linalg.norm(np.diff(pts, axis=0), axis=2)  # (n - 1, 4) px
                row["smoothed" if smooth else "raw"] = float(np.sqrt((step ** 2).mean()))
            c[f"{clip}_q{quality}"] = row
        frames_d = [jpeg(shifted(photo, o), 90) for o in path_offsets(n)]
        found, detections = track(preparer, frames_d, True)
        true = path_offsets(n) - path_offsets(n)[0]
        got = np.stack([centre(f.matrix, size) for f in found])
        raw = np.stack([centre(f.raw_matrix, size) for f in found])
        err = np.linalg.norm((got - got[0]) - true, axis=1)
        err_raw = np.linalg.norm((raw - raw[0]) - true, axis=1)
        d[clip] = {"max_px": float(err.max()), "rms_px": float(np.sqrt((err ** 2).mean())),
                   "raw_max_px": float(err_raw.max()), "raw_rms_px": float(np.sqrt((err_raw ** 2).mean())),
                   "detections": detections, "frames": n}
    return c, d


def report(result: dict) -> None:
    a, b, c, d = result["a_nonface"], result["b_face"], result["c_jitter_rms_px"], result["d_path_error"]
    print(f"(a) non-face 64 px, batch 32: video {a['video_frames_per_s']:.1f} frames/s vs runtime "
          f"{a['runtime_img_per_s']:.1f} img/s = {a['ratio']:.0%}")
    print(f"(b) face video 256 px: tracking {b['tracking']['frames_per_s']:.1f} frames/s "
          f"({b['tracking']['detections']} detections) vs detecting every frame "
          f"{b['detect_every_frame']['frames_per_s']:.1f} frames/s = {b['ratio']:.1f}x")
    if "int8" in b:
        q = b["int8"]
        print(f"    int8 files: tracking {q['tracking']['frames_per_s']:.1f} frames/s vs detecting every frame "
              f"{q['detect_every_frame']['frames_per_s']:.1f} frames/s = {q['ratio']:.1f}x")
    print("(c) jitter, RMS corner motion per frame (px): " + "; ".join(
        f"{k} smoothed {v['smoothed']:.2f} raw {v['raw']:.2f}" for k, v in c.items()))
    print("(d) path error (px): " + "; ".join(
        f"{k} max {v['max_px']:.2f} rms {v['rms_px']:.2f} (raw max {v['raw_max_px']:.2f})" for k, v in d.items()))


def main(argv: list[str] | None = None, *, record: bool = False) -> dict:
    """Run the benchmark; `record`: also append the figures to the result file (what the script does)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300, help="frames of the throughput videos")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the random export here (default: temporary)")
    ap.add_argument("--no-int8", action="store_true", help="(b) with the float32 files only")
    args = ap.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lordkit-video-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    export = work / "export" if (work / "export" / "manifest.json").exists() else build_export(work)
    result = {"cpu": cpu_model(), "time": datetime.now().isoformat(timespec="seconds"), "frames": args.frames}
    print(f"CPU: {result['cpu']}")
    result["a_nonface"] = nonface_throughput(export, work, args.frames)
    result["b_face"], tf = face_throughput(export, work, args.frames, not args.no_int8)
    result["c_jitter_rms_px"], result["d_path_error"] = jitter_and_path(tf.preparer, tf.img_size,
                                                                        min(100, args.frames))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"video-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    print(f"wrote {path}")
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        print(f"appended to {append_result('video', {**result, 'json': str(path)}, args=args, argv=argv)}")
    return result


if __name__ == "__main__":
    main(record=True)
