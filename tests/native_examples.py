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
