"""Video transfer (`lordkit transfer clip.mp4 ...`, lordkit.runtime.video) on small videos written here.

Sources are encoded with PyAV: a moving bar (non-face model), the astronaut photo of scikit-image
moved along a known path (face model), with a sine audio track, irregular timestamps, rotation
metadata, cut short, as an image sequence. Exports are tiny untrained models (tests/factories.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import one_line_error
from factories import make_export, make_model_dir

av = pytest.importorskip("av")

SIZE = 32
CELEBA_TEMPLATE = [[0.37, 0.46], [0.63, 0.46], [0.5, 0.6], [0.4, 0.74], [0.6, 0.74]]
KTH_NAMES = ["person01", "person02", "person05"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("video-exports")
    specs = {"kth": dict(channels=1, n_classes=3, class_names=KTH_NAMES),
             "face": dict(channels=3, n_classes=2, face_template=CELEBA_TEMPLATE)}
    return {name: make_export(make_model_dir(root / "models" / name, img_size=SIZE, seed=k, **kw),
                              root / "exports" / name, torchscript=False, batch_sizes=(2,))
            for k, (name, kw) in enumerate(specs.items())}


def bar_frames(n: int, width: int = 64, height: int = 48) -> list[np.ndarray]:
    """A white bar sweeping left to right over grey: every frame differs."""
    frames = []
    for i in range(n):
        img = np.full((height, width, 3), 60, np.uint8)
        x = int(i * (width - 8) / max(1, n - 1))
        img[:, x:x + 8] = 230
        img[: height // 4, : width // 4] = (200, 30, 30)  # a red corner, to see orientation
        frames.append(img)
    return frames


def write_video(path: Path, frames: list[np.ndarray], *, rate: int = 25, pts: list[int] | None = None,
                time_base: Fraction | None = None, codec: str = "libx264", audio: str | None = None,
                rotation: int | None = None, audio_rate: int = 16000) -> Path:
    """Encode RGB frames; pts in time_base units (default: one per frame at `rate`); optional sine audio."""
    out = av.open(str(path), "w")
    h, w = frames[0].shape[:2]
    v = out.add_stream(codec, rate=rate)
    v.width, v.height, v.pix_fmt = w, h, "yuv420p"
    tb = time_base or Fraction(1, rate)
    v.codec_context.time_base = tb
    v.time_base = tb
    if rotation is not None:
        v.set_display_rotation(rotation)
    a = out.add_stream(audio, rate=audio_rate, layout="mono") if audio else None
    for i, img in enumerate(frames):
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        f.pts, f.time_base = (pts[i] if pts is not None else i), tb
        for p in v.encode(f):
            out.mux(p)
    for p in v.encode():
        out.mux(p)
    if a is not None:  # one sine over the video's length
        duration_s = float((pts[-1] if pts else len(frames)) * tb) + 0.04
        fmt = a.codec_context.format.name
        step = a.codec_context.frame_size or 1024
        for start in range(0, int(duration_s * audio_rate), step):
            s = 0.3 * np.sin(2 * np.pi * 440 * np.arange(start, start + step) / audio_rate)
            samples = (s * 32767).astype(np.int16) if fmt.startswith("s16") else s.astype(np.float32)
            af = av.AudioFrame.from_ndarray(samples[None], format=fmt, layout="mono")
            af.sample_rate, af.pts, af.time_base = audio_rate, start, Fraction(1, audio_rate)
            for p in a.encode(af):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    out.close()
    return path


def probe(path: Path) -> dict:
    """What a player sees: frames (decoded), their times, the rate, size and audio."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        audio = c.streams.audio[0].codec_context.name if c.streams.audio else None
        rate = s.average_rate
        times, frames = [], []
        for f in c.decode(video=0):
            times.append(float(f.pts * f.time_base))
            frames.append(f.to_ndarray(format="rgb24"))
    samples = 0
    if audio:
        with av.open(str(path)) as c:
            samples = sum(f.samples for f in c.decode(audio=0))
    return {"n": len(frames), "times": np.array(times), "rate": rate, "frames": frames, "audio": audio,
            "samples": samples, "size": frames[0].shape[1::-1] if frames else None}


def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    from lordkit.errors import LordkitError
    from lordkit.faces import find_model_file

    try:
        find_model_file("shape68")
    except LordkitError as e:
        pytest.skip(str(e))
    return data.astronaut()


def face_frames(n: int, side: int = 96, dx_px: float = 1.0, blank: int = 0) -> list[np.ndarray]:
    """The astronaut's head, the window sliding so that the face moves dx_px frame pixels per frame;
    the first `blank` frames show only grey."""
    img = astronaut()
    region = 200
    frames = []
    for i in range(n):
        x0 = int(round(115 - (i - n / 2) * dx_px * region / side))
        crop = img[50:50 + region, x0:x0 + region]
        frame = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        frames.append(np.full_like(frame, 128) if i < blank else frame)
    return frames


# ---------------------------------------------------------------------------------------------
# Non-face models: KTH-like motion transfer, timing, audio.


def test_kth_motion_transfer_by_model_name(cli, base, exports, tmp_path):
    shutil.copytree(exports["kth"], base / "exports" / "kth")
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in bar_frames(30, 160, 120)]
    src = write_video(tmp_path / "person01_handwaving_d4_uncomp.avi", [np.stack([g] * 3, -1) for g in grey],
                      codec="mpeg4")
    r = cli("transfer", src, "--class-name", "person05", "-m", "kth", "-o", tmp_path / "out.mp4")
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and "30 frames" in r.stdout
    out = probe(tmp_path / "out.mp4")
    assert out["n"] == 30 and out["rate"] == 25 and out["size"] == (SIZE, SIZE)
    # Class from the bank: another person gives other pictures of the same motion.
    r = cli("transfer", src, "--class-name", "person02", "-m", "kth", "-o", tmp_path / "out2.mp4", "--size", "64")
    assert r.exit_code == 0, r.output
    other = probe(tmp_path / "out2.mp4")
    assert other["size"] == (64, 64)
    small = [cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for f in other["frames"]]
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(out["frames"], small)]) > 2


def test_content_from_every_frame_and_class_from_the_bank(exports, tmp_path):
    from lordkit.imaging import square_resize
    from lordkit.runtime import Transfer
    from lordkit.runtime.video import transfer_video, video_input

    src = write_video(tmp_path / "person01_handwaving_d4_uncomp.avi", bar_frames(23, 160, 120), codec="mpeg4")
    t = Transfer(exports["kth"], provider="cpu", batch_size=4, warn=None)
    seen, classes = [], []
    content_codes, generate_iter = t.content_codes, t.generate_iter
    t.content_codes = lambda crops: seen.extend(crops) or content_codes(crops)
    t.generate_iter = lambda cc, kc: classes.append(kc) or generate_iter(cc, kc)
    kc = t.class_codes(["person05"])
    result = transfer_video(t, video_input(str(src)), kc, [tmp_path / "out.mp4"])
    assert result.n_frames == 23 and len(seen) == 23  # one content crop per frame, in order
    decoded = probe(src)["frames"]
    for crop, frame in zip(seen, decoded):
        assert np.array_equal(crop, square_resize(frame, SIZE, 1))  # the frame's centre square, as photos
    assert all(np.array_equal(k, t.bundle.class_bank[[KTH_NAMES.index("person05")]]) for k in classes)


def test_frame_count_rate_and_audio_copied(cli, exports, tmp_path):
    src = write_video(tmp_path / "clip.mkv", bar_frames(40), rate=30, audio="aac")
    r = cli("transfer", src, "--class-id", "0", "--class-id", "2", "-m", exports["kth"], "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "audio copied" in r.stdout
    source = probe(src)
    for name in ("clip__person01.mp4", "clip__person05.mp4"):  # several classes: <input>__<class>.mp4 in -o
        out = probe(tmp_path / "out" / name)
        assert out["n"] == source["n"] == 40 and out["rate"] == source["rate"] == 30
        assert out["audio"] == "aac" and out["samples"] == source["samples"] > 16000
    # A codec the MP4 container refuses is re-encoded to AAC.
    src = write_video(tmp_path / "mulaw.avi", bar_frames(20), audio="pcm_mulaw", audio_rate=8000)
    r = cli("transfer", src, "--class-id", "1", "-m", exports["kth"], "-o", tmp_path / "mulaw.mp4")
    assert r.exit_code == 0, r.output
    assert "re-encoded to AAC" in r.stdout
    out = probe(tmp_path / "mulaw.mp4")
    assert out["audio"] == "aac" and out["n"] == 20
    assert abs(out["samples"] - probe(src)["samples"]) < 2048  # AAC's priming and padding


def test_variable_frame_rate_is_kept(cli, exports, tmp_path):
    pts = np.cumsum([0, 40, 40, 100, 20, 33, 300, 40, 40, 67, 40, 40, 40, 200, 40]).tolist()  # milliseconds
    src = write_video(tmp_path / "vfr.mkv", bar_frames(len(pts)), pts=pts, time_base=Fraction(1, 1000))
    r = cli("transfer", src, "--class-id", "0", "-m", exports["kth"], "-o", tmp_path / "vfr.mp4")
    assert r.exit_code == 0, r.output
    source, out = probe(src), probe(tmp_path / "vfr.mp4")
    assert out["n"] == len(pts)
    assert np.allclose(out["times"] - out["times"][0], source["times"] - source["times"][0], atol=1e-3)


def test_rotation_metadata_is_applied(exports, tmp_path):
    from lordkit.runtime.video import open_reader, video_input
    from lordkit.runtime.video.sources import Frame

    frames = bar_frames(5, 64, 48)
    src = write_video(tmp_path / "rot.mp4", frames, rotation=90)
    with open_reader(video_input(str(src))) as reader:
        got = [item for item in reader if isinstance(item, Frame)]
        assert reader.info.rotation == 90 and (reader.info.width, reader.info.height) == (48, 64)
    assert len(got) == 5 and got[0].image.shape == (64, 48, 3)
    want = np.rot90(frames[0])  # 90 degrees counter-clockwise: the red corner goes to the bottom left
    assert np.abs(got[0].image.astype(int) - want).mean() < 6
    assert got[0].image[-4:, :4, 0].mean() > 150 and got[0].image[:4, :4, 0].mean() < 120


def test_image_sequence_input(cli, exports, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, img in enumerate(bar_frames(12)):
        cv2.imwrite(str(folder / f"{i + 1:05d}.png"), img[..., ::-1])
    r = cli("transfer", str(folder / "%05d.png"), "--class-id", "0", "-m", exports["kth"], "-o", tmp_path / "seq.mp4")
    assert r.exit_code == 0, r.output
    out = probe(tmp_path / "seq.mp4")
    assert out["n"] == 12 and out["rate"] == 25


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_bad_video_inputs_are_one_line_errors(cli, exports, tmp_path):
    def error(src, *extra) -> str:
        return one_line_error(cli("transfer", src, "--class-id", "0", "-m", exports["kth"], "-o", tmp_path / "o.mp4", *extra))

    assert "video not found" in error(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "is empty" in error(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 50)
    assert "invalid data" in error(tmp_path / "text.mp4")
    full = write_video(tmp_path / "full.mp4", bar_frames(20))
    (tmp_path / "cut.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # MP4's index is at the end
    assert "corrupt or truncated" in error(tmp_path / "cut.mp4")
    out = av.open(str(tmp_path / "zero.mkv"), "w")
    v = out.add_stream("libx264", rate=25)
    v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    out.start_encoding()
    out.close()
    assert "no video frames" in error(tmp_path / "zero.mkv")
    assert "not found" in error(tmp_path / "nothing" / "%05d.png")
    (tmp_path / "nothing").mkdir()
    assert "no files match" in error(tmp_path / "nothing" / "%05d.png")
    if os.geteuid() != 0:  # root reads anything
        locked = shutil.copy(full, tmp_path / "locked.mp4")
        os.chmod(locked, 0)
        assert "permission denied" in error(locked)
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), bar_frames(1)[0])
    assert "either photos or videos" in one_line_error(cli("transfer", full, photo, "--class-id", "0", "-m", exports["kth"], "-o", tmp_path / "d"))
    assert "--grid" in error(full, "--grid")
    assert "face model" in error(full, "--all-faces")
    assert "already exists" in one_line_error(cli("transfer", full, "--class-id", "0", "-m", exports["kth"], "-o", full))
    assert not (tmp_path / "o.mp4").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_a_source_that_breaks_off_keeps_what_was_written(cli, exports, tmp_path):
    full = write_video(tmp_path / "full.mkv", bar_frames(60))
    (tmp_path / "cut.mkv").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    r = cli("transfer", tmp_path / "cut.mkv", "--class-id", "0", "-m", exports["kth"], "-o", tmp_path / "cut_out.mp4")
    assert r.exit_code == 3, r.output  # written, but the source ended early
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "broke off" in warnings[0] and "error" not in r.stderr
    n_read = probe(tmp_path / "cut.mkv")["n"]
    out = probe(tmp_path / "cut_out.mp4")
    assert 0 < out["n"] == n_read < 60


# ---------------------------------------------------------------------------------------------
# Faces.


def test_face_video_pastes_into_every_frame_and_tracks(exports, tmp_path):
    from lordkit.runtime import Transfer
    from lordkit.runtime.video import transfer_video, video_input

    frames = face_frames(30, dx_px=1.0, blank=3)
    src = write_video(tmp_path / "face.mp4", frames)
    t = Transfer(exports["face"], provider="cpu", batch_size=8, warn=None)
    moves = {}
    result = transfer_video(t, video_input(str(src)), t.class_codes([1]), [tmp_path / "out.mp4"], detect_every=10,
                            on_frame=lambda i, ms: moves.__setitem__(i, ms))
    assert result.n_frames == 30 and result.n_no_face == 3
    assert result.n_detections <= 3 + 30 // 10 + 2  # blank frames, then every 10th (not every frame)
    out, source = probe(tmp_path / "out.mp4"), probe(src)
    assert out["n"] == 30 and out["size"] == (96, 96)
    # The face changed, the blank frames and the far corners did not.
    assert np.abs(out["frames"][0].astype(int) - source["frames"][0]).mean() < 2
    centre = [np.abs(o[30:70, 30:70].astype(int) - s[30:70, 30:70]).mean() for o, s in zip(out["frames"][3:], source["frames"][3:])]
    assert min(centre) > 5
    # The crop follows the face: its centre moves by dx_px per frame (here 1 px).
    from lordkit.runtime.video.tracking import matrix_params

    xs = np.array([matrix_params(moves[i][0], SIZE)[0] for i in range(10, 30)])
    assert abs(np.polyfit(np.arange(len(xs)), xs, 1)[0] - 1.0) < 0.2


def test_no_face_in_any_frame_is_an_error(cli, exports, tmp_path):
    astronaut()
    src = write_video(tmp_path / "grey.mp4", [np.full((64, 64, 3), 128, np.uint8)] * 8)
    err = one_line_error(cli("transfer", src, "--class-id", "0", "-m", exports["face"], "-o", tmp_path / "o.mp4"))
    assert "no face found in any of the 8 frames" in err
    assert not (tmp_path / "o.mp4").exists()


def test_all_faces_keep_their_identity(exports):
    from lordkit.runtime import Transfer
    from lordkit.runtime.video import FaceTracker

    left, right = face_frames(16, dx_px=1.0), face_frames(16, dx_px=-1.0)
    t = Transfer(exports["face"], provider="cpu", warn=None)
    tracker = FaceTracker(t.preparer, detect_every=5, all_faces=True)
    ids, xs = [], []
    for i, (a, b) in enumerate(zip(left, right)):
        found = tracker(np.ascontiguousarray(np.concatenate([a, b], 1)), i / 25)
        ids.append([f.track_id for f in found])
        xs.append([float(np.linalg.inv(np.vstack([f.matrix, [0, 0, 1]]))[0, 2]) for f in found])
    assert all(i == [1, 2] for i in ids), ids
    xs = np.array(xs)
    first = 0 if xs[0, 0] < xs[0, 1] else 1  # each id stays on its side and moves its own way
    assert (xs[:, first] < 96).all() and (xs[:, 1 - first] >= 96).all()


def test_demo_video_moves_a_shape_in_every_class(exports, tmp_path):
    from lordkit.cli.demo import _transfer_video

    path = _transfer_video(exports["kth"], tmp_path / "demo.mp4", n_frames=12, fps=12)
    out = probe(path)
    scale = 128 // SIZE
    assert out["n"] == 12 and out["rate"] == 12 and out["size"] == ((len(KTH_NAMES) + 1) * SIZE * scale, SIZE * scale)
    moving = out["frames"][0][:, : SIZE * scale].astype(int) - out["frames"][5][:, : SIZE * scale]
    assert np.abs(moving).mean() > 1  # the content column shows the shape at another place


# ---------------------------------------------------------------------------------------------
# Without PyAV, and stopping a run.


def run_cli(args: list[str], block_av: bool = False, **kw) -> subprocess.Popen:
    code = ("import sys\n" + ("sys.modules['av'] = None\n" if block_av else "")
            + "from lordkit.cli.app import main\nmain(sys.argv[1:])\n")
    env = dict(os.environ, LORDKIT_OFFLINE="1", COLUMNS="200")
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, **kw)


def test_opencv_fallback_without_pyav(exports, tmp_path):
    src = write_video(tmp_path / "clip.avi", bar_frames(20), codec="mpeg4", audio="aac")
    p = run_cli(["transfer", src, "--class-id", "0", "-m", exports["kth"], "-o", tmp_path / "out.mp4"], block_av=True)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "audio is dropped" in warnings[0] and "lordkit[video]" in warnings[0]
    out = probe(tmp_path / "out.mp4")
    assert out["n"] == 20 and out["rate"] == 25 and out["audio"] is None


def test_sigterm_mid_video_leaves_a_playable_file(exports, tmp_path):
    src = write_video(tmp_path / "long.mkv", bar_frames(1500, 64, 48), audio="aac")
    out = tmp_path / "out.mp4"
    p = run_cli(["transfer", src, "--class-id", "0", "-m", exports["kth"], "-o", out, "--batch-size", "2"])
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and p.poll() is None:
        staged = [f for d in tmp_path.glob(".out.mp4.*.tmp") for f in d.glob("out.mp4")]
        if staged and staged[0].stat().st_size > 20_000:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be stopped"
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 143, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1] == "error: terminated (SIGTERM)" and "Traceback" not in stderr  # the warning says what was kept
    assert any(line.startswith("warning: stopped after") for line in lines)
    result = probe(out)
    assert 0 < result["n"] < 1500 and result["audio"] == "aac"
    assert not list(tmp_path.glob(".out.mp4.*"))
