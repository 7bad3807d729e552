"""Shared helpers of the tests that build and run the C and C++ programs in examples/ (import as
`from native_examples import ...`; pytest puts tests/ on sys.path): what the toolchain lacks, running
a program, the image files every program reads and writes, and the tracing inputs of a network."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np


def compiler_missing() -> str | None:
    """Why C++ cannot be compiled here (AOTInductor needs a compiler too), or None."""
    cxx = os.environ.get("CXX")
    if not (cxx and shutil.which(cxx)) and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler (c++, g++, clang++ or $CXX)"
    return None


def toolchain_missing(c: bool = False) -> str | None:
    """Why an example cannot be built here (with `c`, a C program too), or None."""
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    if shutil.which("make") is None and shutil.which("ninja") is None:
        return "no build tool (make or ninja)"
    cc = os.environ.get("CC")
    if c and not (cc and shutil.which(cc)) and not any(shutil.which(x) for x in ("cc", "gcc", "clang")):
        return "no C compiler (cc, gcc, clang or $CC)"
    return compiler_missing()


def tail(text: str, n_lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-n_lines:])


def run(binary: Path, *args: object) -> subprocess.CompletedProcess:
    """Run a program without LD_LIBRARY_PATH: it must find its libraries through its rpath."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def write_images(root: Path, size: int, channels: int) -> dict[str, Path]:
    """Content and class images as uint8 PPM and as float32 .npy holding exactly u8 / 255 (same input)."""
    rng = np.random.default_rng(7)
    paths = {}
    for name in ("content", "class"):
        u8 = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
        np.save(root / f"{name}.npy", u8.astype(np.float32) / 255.0)  # float32 division, as the programs
        (root / f"{name}.ppm").write_bytes(f"P6\n{size} {size}\n255\n".encode() + u8.tobytes())
        paths[f"{name}.npy"] = root / f"{name}.npy"
        paths[f"{name}.ppm"] = root / f"{name}.ppm"
    return paths


def read_ppm(path: Path, size: int | None = None) -> np.ndarray:
    """A binary P6 file written by a program (header `P6\\nW H\\n255\\n`) as (H, W, 3) uint8; with
    `size`, it must be size x size."""
    data = path.read_bytes()
    magic, dims, maxval, pixels = data.split(b"\n", 3)
    assert magic == b"P6" and maxval == b"255", data[:20]
    w, h = map(int, dims.split())
    assert size is None or (h, w) == (size, size)
    assert len(pixels) == h * w * 3
    return np.frombuffer(pixels, np.uint8).reshape(h, w, 3)


def example_inputs(manifest: dict, name: str, batch: int = 2, seed: int = 0) -> tuple:
    """Tracing inputs of one network: images uniform in [0, 1], codes standard normal."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    c, s = manifest["channels"], manifest["img_size"]
    shapes = {"image": (batch, c, s, s), "content_image": (batch, c, s, s), "class_image": (batch, c, s, s),
              "content_code": (batch, manifest["content_dim"]), "class_code": (batch, manifest["class_dim"])}
    return tuple(torch.rand(shapes[n], generator=gen) if "image" in n else torch.randn(shapes[n], generator=gen)
                 for n in manifest["models"][name]["inputs"])


def cmake_build(src: Path, build: Path, prefix: str | Path, programs: tuple[str, ...]) -> list[Path]:
    """Configure (Release, CMAKE_PREFIX_PATH=prefix) and build the example at `src` into `build`;
    the paths of its `programs`. A failed step fails the test with the tail of its output."""
    import sys
    import time

    import pytest

    generator = [] if shutil.which("make") else ["-G", "Ninja"]
    steps = [["cmake", "-S", str(src), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
              f"-DCMAKE_PREFIX_PATH={prefix}"],
             ["cmake", "--build", str(build), "--parallel", "2"]]
    t_start = time.perf_counter()
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail(proc.stdout + proc.stderr)}")
    print(f"\nexamples/{src.name} configured and built in {time.perf_counter() - t_start:.1f} s", file=sys.stderr)
    exes = [build / name for name in programs]
    for exe in exes:
        assert exe.is_file() and os.access(exe, os.X_OK), f"the build made no {exe}"
    return exes


def transfer_references(export: Path, nets: dict, images: dict[str, Path]) -> dict[str, np.ndarray]:
    """(H, W, C) float32 results for the test images: the eager transfer network, and
    lordkit.runtime.Transfer on the export where the runtime is installed."""
    import torch

    content, klass = np.load(images["content.npy"]), np.load(images["class.npy"])
    nchw = [torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None])) for x in (content, klass)]
    with torch.inference_mode():
        out = {"eager": nets["transfer"](*nchw).numpy()[0].transpose(1, 2, 0)}
    try:
        from lordkit.runtime import Transfer
    except ImportError:
        return out
    out["lordkit.runtime.Transfer"] = Transfer(export, provider="cpu", warn=None).transfer([content], [klass])[0, 0]
    return out


def check_npy_output(binary: Path, model: Path, images: dict[str, Path], references: dict[str, np.ndarray],
                     out: Path, tol: float, label: str = "C++") -> None:
    """The program's .npy result for the .npy test images: float32 of the references' shape, within tol
    of each, and nothing on stderr."""
    proc = run(binary, model, images["content.npy"], images["class.npy"], out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    got = np.load(out)
    shape = next(iter(references.values())).shape
    assert got.dtype == np.float32 and got.shape == shape
    for backend, expected in references.items():
        err = float(np.max(np.abs(got.astype(np.float64) - expected)))
        assert err < tol, f"{label} vs {backend}: max abs error {err:.3g}"


def check_ppm_round_trip(binary: Path, model: Path, images: dict[str, Path], reference: np.ndarray, tmp: Path,
                         tol: float) -> None:
    """PPM input reads as u8 / 255 in float32, the .npy input's numbers: the .npy output matches the
    reference, and the PPM output is that result rounded as lordkit.runtime.to_uint8_image rounds."""
    out_npy, out_ppm = tmp / "out.npy", tmp / "out.ppm"
    for out in (out_npy, out_ppm):
        proc = run(binary, model, images["content.ppm"], images["class.ppm"], out)
        assert proc.returncode == 0, proc.stderr
    from_npy = np.load(out_npy)
    assert float(np.max(np.abs(from_npy - reference))) < tol
    rounded = (np.clip(from_npy, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    assert np.array_equal(read_ppm(out_ppm, reference.shape[0]), rounded)


def write_garbage(path: Path, first: bytes = b"") -> Path:
    path.write_bytes(first + np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return path


def bad_case(case: str, export: Path, images: dict[str, Path], tmp: Path, *, size: int, channels: int,
             suffix: str = "", garbage: bytes | None = None) -> tuple[list[object], str]:
    """Arguments for one bad input shared by the programs, and a word their error line must contain.
    suffix: the program's own model file suffix (.pt, .pt2, .pte) for "garbage model" and "other network";
    garbage: that model file's bytes (default: random bytes; runtimes that quote a file's first bytes in
    their message get printable ones)."""
    good = [export, images["content.npy"], images["class.npy"], tmp / "out.npy"]
    if case == "missing content":
        return [export, tmp / "missing.npy", *good[2:]], "missing.npy"
    if case == "missing model":
        return [tmp / "no-export", *good[1:]], "no-export"
    if case == "wrong size":
        np.save(tmp / "small.npy", np.zeros((16, 16, channels), np.float32))
        return [export, good[1], tmp / "small.npy", good[3]], f"16x16x{channels}"
    if case == "wrong channels":
        (tmp / "grey.pgm").write_bytes(f"P5\n{size} {size}\n255\n".encode() + bytes(size * size))
        return [export, tmp / "grey.pgm", *good[2:]], "grey.pgm"
    if case == "garbage npy":
        return [export, write_garbage(tmp / "garbage.npy"), *good[2:]], "garbage.npy"
    if case == "garbage ppm":
        return [export, good[1], write_garbage(tmp / "garbage.ppm"), good[3]], "garbage.ppm"
    if case == "garbage model":
        model = tmp / f"garbage{suffix}"
        if garbage is None:
            write_garbage(model)
        else:
            model.write_bytes(garbage)
        return [model, *good[1:]], f"garbage{suffix}"
    if case == "other network":
        return [export / f"generator{suffix}", *good[1:]], "generator"
    if case == "float range":
        np.save(tmp / "bytes.npy", np.full((size, size, channels), 200.0, np.float32))
        return [export, tmp / "bytes.npy", *good[2:]], "[0, 1]"
    if case == "output type":
        return [*good[:3], tmp / "out.png"], ".png"
    raise ValueError(case)


def check_one_error_line(binary: Path, args: list[object], word: str, tmp: Path) -> None:
    """Exit 1, one `error: ` line naming `word`, and no output file left."""
    proc = run(binary, *args)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert word in lines[0], lines[0]
    assert not (tmp / "out.npy").exists() and not (tmp / "out.png").exists()


def check_usage(binary: Path) -> None:
    """No arguments: usage on stderr, exit 2; --help: usage on stdout, exit 0."""
    proc = run(binary)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: ")
    proc = run(binary, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ")
