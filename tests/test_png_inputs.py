"""PNG files are checked before OpenCV decodes them, because OpenCV's libpng prints its errors and
warnings to file descriptor 2 itself ("libpng error: PNG input buffer is incomplete", "libpng
warning: zTXt: ..."). A broken PNG is one lordkit error and nothing else; a good one decodes to the
same pixels as before, with nothing printed, whatever metadata it carries.

The files are written here by a small PNG encoder (every colour type, bit depth and interlace, any
chunks), so that each case is a real PNG byte for byte. `capfd` reads what reached fd 2.
"""

from __future__ import annotations

import random
import struct
import zlib

import cv2
import numpy as np
import pytest

from lordkit.data.imageio import read_image
from lordkit.data.sources import DecodeError
from lordkit.errors import BadInput
from lordkit.imagelimit import _ADAM7, PngProblem, png_for_decoder
from lordkit.runtime.images import load_image

CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
FLAGS = (cv2.IMREAD_UNCHANGED, cv2.IMREAD_GRAYSCALE, cv2.IMREAD_COLOR)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def rows(img: np.ndarray, depth: int) -> list[bytes]:
    """Each row of (H, W, C) samples packed at `depth` bits, most significant first."""
    if depth == 16:
        return [r.astype(">u2").tobytes() for r in img]
    if depth == 8:
        return [r.astype(np.uint8).tobytes() for r in img]
    out = []
    for r in img:
        bits = np.unpackbits(r.reshape(-1).astype(np.uint8)[:, None], axis=1)[:, 8 - depth:]
        out.append(np.packbits(bits.reshape(-1)).tobytes())
    return out


def idat_bytes(img: np.ndarray, depth: int, interlace: bool = False, filter_type: int = 0) -> bytes:
    raw = b""
    for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
        sub = img[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(bytes([filter_type]) + r for r in rows(sub, depth))
    return raw


def encode(img: np.ndarray, colour: int, depth: int, interlace: bool = False, before: tuple[bytes, ...] = (),
           plte: bytes | None = None, trns: bytes | None = None, raw: bytes | None = None, n_idat: int = 1) -> bytes:
    h, w, _ = img.shape
    z = zlib.compress(idat_bytes(img, depth, interlace) if raw is None else raw)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, int(interlace)))
    out += b"".join(before)
    out += chunk(b"PLTE", plte) if plte is not None else b""
    out += chunk(b"tRNS", trns) if trns is not None else b""
    step = -(-len(z) // n_idat)
    out += b"".join(chunk(b"IDAT", z[i:i + step]) for i in range(0, len(z), step))
    return out + chunk(b"IEND", b"")


def good_pngs() -> dict[str, bytes]:
    """Every colour type and bit depth, plain and interlaced, with palettes and transparency."""
    rng = np.random.default_rng(1)
    out = {}
    for colour, depths in DEPTHS.items():
        for depth in depths:
            for interlace in (False, True):
                h, w = (13, 7) if interlace else (5, 33)
                top, plte, trns = (1 << depth) - 1, None, None
                if colour == 3:
                    n = min(1 << depth, 256)
                    top, plte = n - 1, rng.integers(0, 256, 3 * n, np.uint8).tobytes()
                    trns = rng.integers(0, 256, max(1, n // 2), np.uint8).tobytes() if interlace else None
                elif colour == 0 and interlace:
                    trns = struct.pack(">H", min(3, top))
                elif colour == 2 and interlace:
                    trns = struct.pack(">3H", 1, 2, 3)
                img = rng.integers(0, top + 1, (h, w, CHANNELS[colour]))
                out[f"type{colour}-{depth}bit{'-interlaced' if interlace else ''}"] = encode(
                    img, colour, depth, interlace, plte=plte, trns=trns, n_idat=3 if interlace else 1)
    rgb = rng.integers(0, 256, (16, 24, 3))
    exif = b"MM\x00*\x00\x00\x00\x08\x00\x01" + struct.pack(">HHII", 0x0112, 3, 1, 6 << 16) + b"\x00" * 4
    out["gamma"] = encode(rgb, 2, 8, before=(chunk(b"gAMA", struct.pack(">I", 45455)),))  # changes grey decoding
    out["srgb"] = encode(rgb, 2, 8, before=(chunk(b"sRGB", b"\x00"),))
    out["exif-rotated"] = encode(rgb, 2, 8, before=(chunk(b"eXIf", exif),))  # OpenCV turns it
    _, opencv = cv2.imencode(".png", rng.integers(0, 65536, (9, 11, 4), np.uint16))
    out["opencv-16bit-alpha"] = opencv.tobytes()
    return out


def decode(data: bytes) -> list[np.ndarray | None]:
    out = []
    for flag in FLAGS:
        try:
            out.append(cv2.imdecode(np.frombuffer(data, np.uint8), flag))
        except cv2.error:
            out.append(None)
    return out


def same(a: list, b: list) -> bool:
    return all(x is not None and y is not None and x.shape == y.shape and (x == y).all() for x, y in zip(a, b))


def test_good_pngs_decode_to_the_same_pixels_silently(capfd):
    for name, data in good_pngs().items():
        want = decode(data)
        checked = png_for_decoder(np.frombuffer(data, np.uint8))
        assert checked.tobytes() == data, f"{name}: nothing should be dropped"
        assert same(decode(checked.tobytes()), want), name
    assert capfd.readouterr().err == ""


RGB = np.random.default_rng(5).integers(0, 256, (16, 13, 3))
PALETTE = np.random.default_rng(6).integers(0, 256, 48, np.uint8).tobytes()
PAL_IMG = np.random.default_rng(7).integers(0, 16, (16, 13, 1))
NOISY = {  # chunks libpng prints a warning about (or fails on) before or while decoding the pixels
    "ztxt-200MB": (chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * 200_000_000, 9)),),
    "text-broken": (chunk(b"iTXt", b"k\x00\x01\x09xx"),),
    "icc-garbage": (chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"x" * 300)),),
    "gamma-short": (chunk(b"gAMA", b"\x00\x01"),),
    "gamma-twice": (chunk(b"gAMA", struct.pack(">I", 100000)), chunk(b"gAMA", struct.pack(">I", 45455))),  # the first, 1.0, counts
    "srgb-9": (chunk(b"sRGB", b"\x09"),),
    "exif-garbage": (chunk(b"eXIf", b"garbage!" * 3),),
    "phys-short": (chunk(b"pHYs", b"\x00"),),
    "background-short": (chunk(b"bKGD", b"\x00"),),
    "sbit-9": (chunk(b"sBIT", b"\x09\x09\x09"),),
    "time-short": (chunk(b"tIME", b"x"),),
    "cicp-short": (chunk(b"cICP", b"\x09\x09"),),
    "trns-on-rgb-short": (chunk(b"tRNS", b"\x00"),),
}


@pytest.mark.parametrize("name", list(NOISY))
def test_metadata_libpng_complains_about_is_dropped_and_the_pixels_are_kept(name, capfd):
    data = encode(RGB, 2, 8, before=NOISY[name])
    capfd.readouterr()
    checked = png_for_decoder(np.frombuffer(data, np.uint8))
    assert same(decode(checked.tobytes()), decode(encode(RGB, 2, 8)))
    assert capfd.readouterr().err == ""


def broken_pngs() -> dict[str, bytes]:
    raw = idat_bytes(RGB, 8)
    plain = encode(RGB, 2, 8)
    head = plain[:33]  # signature + IHDR

    def with_idat(*payloads: bytes) -> bytes:
        return head + b"".join(chunk(b"IDAT", p) for p in payloads) + chunk(b"IEND", b"")

    z = zlib.compress(raw)
    return {
        "cut-in-idat": plain[:len(plain) // 2],
        "cut-before-iend": plain[:-12],
        "cut-in-iend": plain[:-3],
        "idat-checksum": plain[:-20] + bytes([plain[-20] ^ 1]) + plain[-19:],
        "unknown-critical-chunk": encode(RGB, 2, 8, before=(chunk(b"ABCD", b"x"),)),
        "palette-of-300": encode(PAL_IMG, 3, 8, plte=b"\x01" * 900),
        "palette-image-without-palette": encode(PAL_IMG, 3, 8),
        "filter-type-5": with_idat(zlib.compress(b"".join(b"\x05" + raw[i + 1:i + 40] for i in range(0, len(raw), 40)))),
        "two-headers": head + plain[8:],
        "image-data-split": head + chunk(b"IDAT", z[:50]) + chunk(b"tEXt", b"a\x00b") + chunk(b"IDAT", z[50:])
        + chunk(b"IEND", b""),
        "bytes-after-the-stream": with_idat(z + b"extra"),
        "too-much-image-data": with_idat(zlib.compress(raw + b"\x00" * 40)),
        "too-little-image-data": with_idat(zlib.compress(raw[:-40])),
        "deflate-corrupt": with_idat(z[:20] + bytes([z[20] ^ 0xFF]) + z[21:]),
        "width-2M": b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2_000_000, 10, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 10 * 2_000_001)) + chunk(b"IEND", b""),
    }


@pytest.mark.parametrize("name", list(broken_pngs()))
def test_a_broken_png_is_one_error_and_nothing_from_libpng(name, tmp_path, capfd):
    data = broken_pngs()[name]
    capfd.readouterr()
    failed = any(img is None for img in decode(data))  # what OpenCV alone does with it
    printed = capfd.readouterr().err
    assert failed or printed, f"{name} should be a file libpng fails on or complains about"
    path = tmp_path / "broken.png"
    path.write_bytes(data)
    with pytest.raises(BadInput, match="cannot decode .*broken.png: (truncated or corrupt|corrupt|unsupported|corrupt or unsupported) PNG"):
        load_image(path)
    with pytest.raises(DecodeError, match="broken.png is not a decodable image"):
        read_image(path)
    assert capfd.readouterr().err == ""


def test_every_cut_and_random_damage_of_a_png_is_quiet(tmp_path, capfd):
    """Cut after every byte, or with one bit flipped anywhere: refused, or decoded; never a libpng line."""
    rng = random.Random(3)
    outcomes = {"refused": 0, "decoded": 0}
    originals = [encode(RGB, 2, 8), good_pngs()["type3-4bit-interlaced"], good_pngs()["type0-16bit-interlaced"]]
    for data in originals:
        damaged = [data[:cut] for cut in range(8, len(data))]
        for _ in range(150):
            b = bytearray(data)
            b[rng.randrange(8, len(b))] ^= 1 << rng.randrange(8)
            damaged.append(bytes(b))
        for b in damaged:
            try:
                checked = png_for_decoder(np.frombuffer(b, np.uint8))
            except PngProblem:
                outcomes["refused"] += 1
                continue
            assert all(img is not None for img in decode(checked.tobytes()))
            outcomes["decoded"] += 1
    assert capfd.readouterr().err == ""
    assert outcomes["refused"] > 1000, outcomes


def test_the_cli_prints_nothing_from_libpng(tmp_path, cli, capfd):
    """transfer with a 200 MB zTXt chunk: rc 0 and no libpng line; a PNG cut in its last bytes: one line."""
    from factories import make_export, make_model_dir

    export = make_export(make_model_dir(tmp_path / "model"), tmp_path / "export", onnx=True, torchscript=False,
                         batch_sizes=(2,))
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3))
    (tmp_path / "big-text.png").write_bytes(encode(img, 2, 8, before=NOISY["ztxt-200MB"]))
    (tmp_path / "cut.png").write_bytes(encode(img, 2, 8)[:-20])
    capfd.readouterr()
    for photo, rc in (("big-text.png", 0), ("cut.png", 2)):
        result = cli("transfer", tmp_path / photo, "-m", export, "--class-id", "0", "-o", tmp_path / "out.png", "--force")
        assert result.exit_code == rc, result.output
        printed = capfd.readouterr().err  # what reached file descriptor 2 directly
        assert "libpng" not in printed + result.stderr and "warning" not in result.stderr.lower(), printed
        if rc:
            [line] = result.stderr.strip().splitlines()
            assert line.startswith(f"error: cannot decode {tmp_path / photo}: truncated or corrupt PNG file"), line
