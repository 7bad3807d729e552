"""`lordkit transfer`: draw photos' content in other classes with an export, without torch."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from lordkit.errors import LordkitError
from lordkit.fsutil import check_can_create, check_input_file, recover

from .common import get_base, handle_errors, say

if TYPE_CHECKING:  # the runtime loads onnxruntime and OpenCV: imported when a transfer runs
    from lordkit.runtime import Prepared, Transfer

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(label: str) -> str:
    """A label usable in a file name: anything but letters, digits, '.', '_' and '-' becomes '_'."""
    return _SAFE.sub("_", label).strip("._") or "image"


def _unique(labels: list[str]) -> list[str]:
    """Make labels distinct (a.jpg from two folders, a class given twice): later ones get -2, -3, ..."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        k = seen.get(label, 0) + 1
        seen[label] = k
        out.append(label if k == 1 else f"{label}-{k}")
    return out


def _layout(out: Path, single: bool, grid: bool) -> str:
    """"file" (OUT is the PNG), "dir_single" (one PNG into an existing dir) or "dir" (one PNG per pair)."""
    if grid or single:
        return "dir_single" if out.is_dir() else "file"
    if out.exists() and not out.is_dir():
        raise LordkitError(f"{out} is a file, but this run writes several images; give a directory (or --grid)")
    if out.suffix.lower() == ".png" and not out.exists():
        raise LordkitError(f"{out} looks like a file, but this run writes several images; give a directory "
                           "(or --grid for one image)")
    return "dir"


def _as_int(text: str, flag: str, minimum: int | None = None) -> int:
    """An integer option parsed here, so that a bad value is one error line (click draws a usage box)."""
    try:
        value = int(text.strip())
    except ValueError:
        raise LordkitError(f"{flag} must be an integer, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise LordkitError(f"{flag} must be >= {minimum}, got {value}")
    return value


def _check_photo(path: Path) -> None:
    """An input photo must be a readable regular file; checked before the export is opened."""
    check_input_file(path, "image")


def _check_writable(out: Path) -> None:
    """-o must be creatable (checked before any work); then what a transfer killed outright left beside
    its outputs is cleared (dead processes' temporary names only)."""
    recover(check_can_create(out if out.is_dir() else out.parent))


@handle_errors
def transfer(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(help="Content photos (their pose, expression, layout... is kept), or videos: a video file, an image sequence (frames/%05d.png), a camera index or a stream URL.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Export dir, or a name under <base-dir>/exports/.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output PNG (one input, one class), else a directory of <input>__<class>.png; with --grid the grid PNG. Videos: the output video, else a directory of <input>__<class>.mp4.")],
    class_imgs: Annotated[Optional[list[Path]], typer.Option("--class", help="Class reference photo, repeatable.")] = None,
    class_ids: Annotated[Optional[list[str]], typer.Option("--class-id", metavar="N", help="Class id of the training set (row of the class bank), repeatable.")] = None,
    class_names: Annotated[Optional[list[str]], typer.Option("--class-name", help="Class name of the training set, repeatable.")] = None,
    batch_size: Annotated[str, typer.Option("--batch-size", metavar="N", help="Images or pairs per onnxruntime call.")] = "32",
    provider: Annotated[str, typer.Option("--provider", help="auto (CUDA when onnxruntime has it), cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[Optional[str], typer.Option("--threads", metavar="N", help="onnxruntime intra-op threads (default: one per core).")] = None,
    precision: Annotated[str, typer.Option("--precision", help="Which ONNX files run: fp32, fp16 or int8 (export --fp16 / --int8 writes them).")] = "fp32",
    no_align: Annotated[bool, typer.Option("--no-align", help="Face models: the photos are crops aligned already.")] = False,
    all_faces: Annotated[bool, typer.Option("--all-faces", help="Face models: every face of each photo, not only the largest.")] = False,
    paste_back: Annotated[bool, typer.Option("--paste-back", help="Face models: write the whole photo with the generated face pasted in.")] = False,
    landmarks: Annotated[str, typer.Option("--landmarks", help="68, 5, or the path of a dlib shape predictor .dat file.")] = "68",
    detector: Annotated[str, typer.Option("--detector", help="Face detector: hog (fast) or cnn (dlib's MMOD, slow on CPU).")] = "hog",
    alpha_background: Annotated[str, typer.Option("--alpha-background", help="white or black under transparent pixels.")] = "white",
    grid: Annotated[bool, typer.Option("--grid", help="Write one grid PNG: a row per class, a column per input, sources shown.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing output files.")] = False,
    size: Annotated[Optional[str], typer.Option("--size", metavar="N", help="Videos, non-face models: output side in px (default: the model's size).")] = None,
    detect_every: Annotated[str, typer.Option("--detect-every", metavar="N", help="Videos, face models: search faces every N frames, follow them in between.")] = "10",
    smooth: Annotated[bool, typer.Option("--smooth/--no-smooth", help="Videos, face models: smooth the face alignment over time (One Euro filter).")] = True,
) -> None:
    """Draw each input's content in each given class (N inputs x M classes images, or videos)."""
    from lordkit.runtime import Transfer, resolve_export
    from lordkit.runtime.video import video_input

    videos = [video_input(text) for text in inputs]
    if any(videos):
        _transfer_videos(ctx, inputs, videos, model=model, out=out, class_imgs=class_imgs or [],
                         class_ids=class_ids or [], class_names=class_names or [], batch_size=batch_size,
                         provider=provider, threads=threads, precision=precision, no_align=no_align,
                         all_faces=all_faces,
                         landmarks=landmarks, detector=detector, alpha_background=alpha_background, grid=grid,
                         paste_back=paste_back, force=force, size=size, detect_every=detect_every, smooth=smooth)
        return
    for flag, used in (("--size", size is not None), ("--detect-every", detect_every != "10"), ("--no-smooth", not smooth)):
        if used:
            raise LordkitError(f"{flag} applies to videos; the inputs are photos")
    inputs = [Path(text) for text in inputs]
    class_imgs, class_names = class_imgs or [], class_names or []
    class_ids = [_as_int(i, "--class-id") for i in class_ids or []]  # the export's range is checked later
    n_batch = _as_int(batch_size, "--batch-size", 1)
    n_threads = _as_int(threads, "--threads", 1) if threads is not None else None
    if not (class_imgs or class_ids or class_names):
        raise LordkitError("give at least one class: --class REF.jpg, --class-id N or --class-name NAME")
    if grid and paste_back:
        raise LordkitError("--grid shows the model's crops; it cannot be combined with --paste-back")
    if paste_back and no_align:
        raise LordkitError("--paste-back needs faces found in the photos; it cannot be combined with --no-align")

    # Paths are checked before the export is opened and hashed.
    for path in [*inputs, *class_imgs]:
        _check_photo(path)
    _check_writable(out)

    t = Transfer(resolve_export(model, get_base(ctx)), provider=provider, threads=n_threads, batch_size=n_batch,
                 precision=precision, align=not no_align, landmarks=landmarks, detector=detector, alpha_background=alpha_background)
    if not t.is_face:
        for flag, used in (("--paste-back", paste_back), ("--all-faces", all_faces)):
            if used:
                raise LordkitError(f"{flag} needs a face model; {t.bundle.path} has no face template")

    # Class sources: reference photos first, then ids, then names (grid rows follow this order).
    class_refs, class_labels = _class_refs(t, class_imgs, class_ids, class_names)

    # Content: the largest face (or every face) of each photo, or the centre square.
    contents, photo_of = [], []
    for k, path in enumerate(inputs):
        found = t.prepare(path, all_faces=all_faces)
        contents += found
        photo_of += [k] * len(found)
        if paste_back and found[0].photo_scale < 1:
            h, w = found[0].photo.shape[:2]
            t.warn(f"{path} is about {w / found[0].photo_scale:.0f}x{h / found[0].photo_scale:.0f} px; "
                   f"the pasted result is written at the working size {w}x{h}")
    content_labels = _unique([_safe(p.label) for p in contents])
    photo_labels = _unique([_safe(p.stem) for p in inputs])

    # Where everything goes; refuse to overwrite before any work.
    single_known = len(inputs) == 1 and len(class_refs) == 1 and not (all_faces and not paste_back)
    layout = _layout(out, single_known, grid)
    if grid:
        targets = [out]
    elif paste_back:
        targets = [out / f"{photo_labels[k]}__{c}.png" for k in range(len(inputs)) for c in class_labels]
    else:
        targets = [out / f"{a}__{c}.png" for a in content_labels for c in class_labels]
    if layout == "file":
        targets = [out]
    elif layout == "dir_single" and grid:
        targets = [out / "transfer_grid.png"]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise LordkitError(f"output {existing[0]} already exists{more}; pass --force to replace it")

    job = _Job(contents=contents, photo_of=photo_of, class_refs=class_refs, content_labels=content_labels,
               class_labels=class_labels, targets=targets, grid=grid, paste_back=paste_back)
    written = _run(t, job)
    say(f"wrote {written[0]}" if len(written) == 1 else f"wrote {len(written)} images to {out}")


def _class_refs(t: Transfer, class_imgs: list[Path], class_ids: list[int], class_names: list[str]) -> tuple[list, list[str]]:
    """Class sources (reference photos first, then ids, then names) and their file-name labels."""
    class_refs: list = [t.prepare(p)[0] for p in class_imgs]
    class_labels = [p.stem for p in class_imgs]
    for i in class_ids:
        class_refs.append(t.bundle.class_id(i))
        class_labels.append(t.class_names[class_refs[-1]])
    for name in class_names:
        class_refs.append(t.bundle.class_id(name))
        class_labels.append(name)
    return class_refs, _unique([_safe(x) for x in class_labels])


def _transfer_videos(ctx: typer.Context, inputs: list[str], videos: list, *, model: str, out: Path,
                     class_imgs: list[Path], class_ids: list[str], class_names: list[str], batch_size: str,
                     provider: str, threads: str | None, precision: str, no_align: bool, all_faces: bool,
                     landmarks: str,
                     detector: str, alpha_background: str, grid: bool, paste_back: bool, force: bool,
                     size: str | None, detect_every: str, smooth: bool) -> None:
    """`lordkit transfer` on videos (cli/video.py runs them)."""
    from lordkit.runtime import Transfer, resolve_export
    from lordkit.runtime.video import check_video_file

    from .video import run_videos, video_targets

    if not all(videos):
        photo = next(text for text, v in zip(inputs, videos) if v is None)
        raise LordkitError(f"give either photos or videos in one run: {photo} is not a video input")
    ids = [_as_int(i, "--class-id") for i in class_ids]
    n_batch = _as_int(batch_size, "--batch-size", 1)
    n_threads = _as_int(threads, "--threads", 1) if threads is not None else None
    n_size = _as_int(size, "--size", 8) if size is not None else None
    n_detect = _as_int(detect_every, "--detect-every", 1)
    if not (class_imgs or ids or class_names):
        raise LordkitError("give at least one class: --class REF.jpg, --class-id N or --class-name NAME")
    if grid:
        raise LordkitError("--grid makes one picture of photos; it cannot be used with videos")
    if paste_back and no_align:
        raise LordkitError("--paste-back needs faces found in the frames; it cannot be combined with --no-align")
    for source in videos:
        check_video_file(source)
    for path in class_imgs:
        _check_photo(path)
    _check_writable(out)

    t = Transfer(resolve_export(model, get_base(ctx)), provider=provider, threads=n_threads, batch_size=n_batch,
                 precision=precision, align=not no_align, landmarks=landmarks, detector=detector, alpha_background=alpha_background)
    aligning = t.is_face and not no_align
    if not t.is_face:
        for flag, used in (("--paste-back", paste_back), ("--all-faces", all_faces)):
            if used:
                raise LordkitError(f"{flag} needs a face model; {t.bundle.path} has no face template")
    if aligning and n_size is not None:
        raise LordkitError("--size sets the size of a model's results; face models paste them into the full frame")
    class_refs, class_labels = _class_refs(t, class_imgs, ids, class_names)
    targets = video_targets(videos, class_labels, out)
    existing = [p for row in targets for p in row if p.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise LordkitError(f"output {existing[0]} already exists{more}; pass --force to replace it")
    run_videos(t, videos, class_refs, class_labels, targets, out_size=n_size, detect_every=n_detect,
               all_faces=all_faces, smooth=smooth)


@dataclass
class _Job:
    """Every content drawn in every class, and where the results go."""

    contents: list[Prepared]  # model inputs, in input order (all faces of a photo together)
    photo_of: list[int]  # index of the input photo each content was cut from
    class_refs: list[Prepared | int]  # reference photos' inputs or class-bank rows
    content_labels: list[str]
    class_labels: list[str]
    targets: list[Path]  # one per (content, class) pair, per (photo, class) with paste_back, or the grid
    grid: bool = False  # one grid PNG instead of a file per pair
    paste_back: bool = False  # faces go back into their photos


def _run(t: Transfer, job: _Job) -> list[Path]:
    """Generate every (content, class) pair, content-major, writing each result as soon as it is complete."""
    import numpy as np

    from lordkit.console import make_progress
    from lordkit.runtime import Prepared, to_uint8_image
    from lordkit.viz import save_png, transfer_grid

    m = len(job.class_refs)
    cc = t.content_codes(job.contents)
    kc = t.class_codes(job.class_refs)
    written: list[Path] = []
    keep = job.grid or job.paste_back
    results: dict[tuple[int, int], np.ndarray] = {}  # (content, class) -> uint8 crop, while still needed
    # With paste-back, a photo is written once all its faces are generated in every class.
    faces_of: dict[int, list[int]] = {}
    for i, k in enumerate(job.photo_of):
        faces_of.setdefault(k, []).append(i)
    next_photo = 0  # photos come in input order: pairs are generated content-major
    with make_progress(transient=True) as progress:
        task = progress.add_task("transfer", total=len(job.contents) * m, unit="img")
        for a, b, imgs in t.generate_iter(cc, kc):
            for p, img in zip(range(a, b), imgs):
                i, j = divmod(p, m)
                crop = to_uint8_image(img)
                if keep:
                    results[(i, j)] = crop
                else:
                    written.append(save_png(job.targets[p], crop))
            progress.advance(task, b - a)
            while job.paste_back and next_photo in faces_of and b >= (faces_of[next_photo][-1] + 1) * m:
                written += _paste_photo(t, job, next_photo, faces_of[next_photo], results)
                next_photo += 1
    if job.grid:
        n = len(job.contents)
        classes = [ref.image if isinstance(ref, Prepared) else None for ref in job.class_refs]  # bank rows: no picture
        sheet = transfer_grid([c.image for c in job.contents], classes,
                              [[results[(i, j)] for i in range(n)] for j in range(m)], cell=max(64, t.img_size),
                              row_labels=["", *job.class_labels], col_labels=["", *job.content_labels])
        written.append(save_png(job.targets[0], sheet))
    return written


def _paste_photo(t: Transfer, job: _Job, k: int, faces: list[int], results: dict) -> list[Path]:
    """Write photo k once per class, with each of its faces (content indices `faces`) pasted in."""
    from lordkit.viz import save_png

    m = len(job.class_refs)
    out = []
    for j in range(m):
        photo = None
        for i in faces:  # faces pasted one after another into the same photo
            photo = t.paste_back(job.contents[i], results.pop((i, j)), photo)
        out.append(save_png(job.targets[k * m + j], photo))
    return out


def register(app: typer.Typer) -> None:
    app.command("transfer")(transfer)
