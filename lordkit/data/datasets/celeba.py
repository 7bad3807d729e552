"""CelebA (Liu et al. 2015), aligned-and-cropped release: class = identity, no content labels.

Reads the files as distributed:
    Img/img_align_celeba/000001.jpg ...                (JPEG release), or
    Img/img_align_celeba_png/000001.png ...            (PNG release), also accepted as unpacked
    Img/img_align_celeba_png.7z/img_align_celeba_png/  (the folder layout of the 7z parts), or
    img_align_celeba/ directly under the given folder
    Anno/identity_CelebA.txt                           "000001.jpg 2880" per line
    Anno/list_landmarks_align_celeba.txt               count line, header line, then
                                                       "000001.jpg lefteye_x lefteye_y ... rightmouth_y"

Every aligned image is 178x218 (w x h). As in the LORD reference, each is cut to its centred
128x128 square (rows 45..172, columns 25..152); the pipeline then resizes that to --img-size.

Class names are the identity numbers zero-padded to five digits ("02880"; CelebA has 10,177
identities), so that sorting names, which numbers the classes, sorts identities numerically.
Images are taken in the order of the identity file; `--opt max_images=N` keeps its first N lines.

The face template is the mean of the five annotated landmarks (left eye, right eye, nose tip,
left and right mouth corner, left/right as seen in the image: lordkit.faces' "eyes_nose_mouth"
set) over the images read, moved into the 128 px crop and divided by 128.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from lordkit.data.imageio import read_image
from lordkit.data.sources import Chunk, DecodeError, Loaded, Options, Source, register, require_file, sorted_class_map
from lordkit.errors import LordkitError

ALIGNED_HW = (218, 178)  # (height, width) of every img_align_celeba image
CROP = 128  # LORD's centred crop of the aligned image
CROP_TOP, CROP_LEFT = ALIGNED_HW[0] // 2 - CROP // 2, ALIGNED_HW[1] // 2 - CROP // 2  # 45, 25
ID_WIDTH = 5  # identity names are zero-padded to this many digits
IMAGE_DIRS = (  # (folder, file suffix), first existing one wins
    ("Img/img_align_celeba", ".jpg"),
    ("Img/img_align_celeba_png", ".png"),
    ("Img/img_align_celeba_png.7z/img_align_celeba_png", ".png"),
    ("img_align_celeba", ".jpg"),
)
IDENTITY_FILE = "Anno/identity_CelebA.txt"
LANDMARKS_FILE = "Anno/list_landmarks_align_celeba.txt"


def _find_images(root: Path) -> tuple[Path, str]:
    for rel, suffix in IMAGE_DIRS:
        folder = root / rel
        if folder.is_dir():
            return folder, suffix
    raise LordkitError(f"CelebA images not found under {root}: expected {IMAGE_DIRS[0][0]}/ (JPEG) or "
                       f"{IMAGE_DIRS[1][0]}/ (PNG) holding 000001.jpg ...")


def _read_identities(path: Path, max_images: int | None) -> list[tuple[str, int]]:
    """(image name as listed, identity number) per line of identity_CelebA.txt."""
    out: list[tuple[str, int]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 2:
                    raise ValueError
                out.append((fields[0], int(fields[1])))
            except ValueError:
                raise LordkitError(f"{path}:{line_no}: expected '<image> <identity number>', got {line.strip()!r}") from None
            if max_images is not None and len(out) >= max_images:
                break
    if not out:
        raise LordkitError(f"{path} lists no images")
    return out


def _mean_landmarks(path: Path, wanted: set[str]) -> np.ndarray:
    """Mean (5, 2) landmarks in aligned-image pixels over the listed images in `wanted`."""
    total = np.zeros(10)
    n = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if line_no <= 2 or len(fields) != 11 or fields[0] not in wanted:
                continue  # count line, header line, blank lines, images not read
            try:
                total += np.array([float(v) for v in fields[1:]])
            except ValueError:
                raise LordkitError(f"{path}:{line_no}: expected '<image>' and 10 coordinates, "
                                   f"got {line.strip()!r}") from None
            n += 1
    if n == 0:
        raise LordkitError(f"{path} has no landmarks for any of the {len(wanted)} images read "
                           "(expected a count line, a header line, then '000001.jpg x y ...' rows)")
    return (total / n).reshape(5, 2)


def _load(path: Path, listed_name: str, class_id: int) -> Loaded:
    if not path.is_file():
        raise DecodeError(f"listed in {IDENTITY_FILE} as {listed_name} but missing on disk")
    img = read_image(path)
    if img.shape != (*ALIGNED_HW, 3):
        raise DecodeError(f"expected an aligned CelebA image of {ALIGNED_HW[1]}x{ALIGNED_HW[0]} "
                          f"(w x h), found {img.shape[1]}x{img.shape[0]}")
    crop = img[CROP_TOP:CROP_TOP + CROP, CROP_LEFT:CROP_LEFT + CROP]  # (128, 128, 3)
    return Loaded(images=crop, class_ids=class_id, per_image={"image_number": int(path.stem)})


def _image_number(name: str, where: Path) -> int:
    try:
        return int(Path(name).stem)
    except ValueError:
        raise LordkitError(f"{where}: image name {name!r} is not a number like 000001.jpg") from None


@register("celeba", "CelebA aligned faces, Img/ + Anno/ (class = identity, LORD's 128 px centre crop)", is_face=True)
def open_celeba(path: Path, opts: Options) -> Source:
    max_images = opts.get("max_images", None, int)
    if max_images is not None and max_images < 1:
        raise LordkitError(f"--opt max_images={max_images}: must be at least 1")
    if not path.is_dir():
        raise LordkitError(f"CelebA folder not found: {path} (expected the folder holding Img/ and Anno/)")
    folder, suffix = _find_images(path)
    identity_file = require_file(path / IDENTITY_FILE, "CelebA identity file")
    landmarks_file = require_file(path / LANDMARKS_FILE, "CelebA landmarks file (needed for the face template)")

    listed = _read_identities(identity_file, max_images)
    names, ids = sorted_class_map(f"{identity:0{ID_WIDTH}d}" for _, identity in listed)
    chunks = []
    for name, identity in listed:
        _image_number(name, identity_file)
        file = folder / (Path(name).stem + suffix)  # the PNG release renames 000001.jpg to 000001.png
        chunks.append(Chunk(str(file), 1, partial(_load, file, name, ids[f"{identity:0{ID_WIDTH}d}"])))

    mean = _mean_landmarks(landmarks_file, {name for name, _ in listed})  # (5, 2) aligned-image pixels
    template = (mean - [CROP_LEFT, CROP_TOP] + 0.5) / CROP  # pixel centres sit at (i + 0.5) / size
    return Source(
        class_names=names, channels=3, chunks=chunks,
        face_template=[[round(float(x), 6), round(float(y), 6)] for x, y in template],
        extra={"images": str(folder.relative_to(path)), "crop": [CROP_TOP, CROP_LEFT, CROP, CROP],
               "face_points": "eyes_nose_mouth"},
    )
