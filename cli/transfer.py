"""`lordkit transfer`: draw photos' content in other classes with an export, without torch.

The command parses its options into a lordkit.runtime.job.TransferJob, which holds the request's
rules; this module only checks paths, plans the output files and writes them. Videos go to
cli/video.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from lordkit.errors import BadInput, LordkitError
from lordkit.fsutil import check_can_create, check_input_file, recover

from .common import as_int, get_base, handle_errors, refuse_existing, say

if TYPE_CHECKING:  # the runtime loads onnxruntime and OpenCV: imported when a transfer runs
    from lordkit.runtime import Transfer
    from lordkit.runtime.job import TransferJob
    from lordkit.runtime.transfer import PreparedJob


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
    backend: Annotated[str, typer.Option("--backend", help="Engine: onnxruntime, openvino (same ONNX files, CPU) or torch (the export's .pt2 packages, export --aoti).")] = "onnxruntime",
    provider: Annotated[str, typer.Option("--provider", help="auto (CUDA when onnxruntime has it), cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[Optional[str], typer.Option("--threads", metavar="N", help="onnxruntime intra-op threads (default: one per core).")] = None,
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16 or int8 ONNX files (export --fp16 / --int8 writes them); openvino: fp32, bf16 or int8.")] = "fp32",
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
    from lordkit.runtime.job import TransferJob, TransferOptions
    from lordkit.runtime.video import check_video_file, video_input

    from . import video

    # The request, parsed and checked before any file is opened.
    videos = [video_input(text) for text in inputs]
    n_batch = as_int(batch_size, "--batch-size", 1)
    n_threads = as_int(threads, "--threads", 1) if threads is not None else None
    class_imgs = class_imgs or []
    job = TransferJob(contents=videos if any(videos) else [Path(text) for text in inputs], class_images=class_imgs,
                      class_ids=[as_int(i, "--class-id") for i in class_ids or []],  # the export's range: later
                      class_names=class_names or [],
                      options=TransferOptions(align=not no_align, all_faces=all_faces, paste_back=paste_back))
    job.check()
    if any(videos):
        settings = video.settings(inputs, videos, grid=grid, size=size, detect_every=detect_every, smooth=smooth)
        for source in videos:
            check_video_file(source)
    else:
        for flag, used in (("--size", size is not None), ("--detect-every", detect_every != "10"),
                           ("--no-smooth", not smooth)):
            if used:
                raise BadInput(f"{flag} applies to videos; the inputs are photos")
        if grid and paste_back:
            raise BadInput("--grid shows the model's crops; it cannot be combined with --paste-back")
        for path in job.contents:
            check_input_file(path, "image")
    # Paths are checked before the export is opened and hashed.
    for path in class_imgs:
        check_input_file(path, "image")
    _check_writable(out)

    t = Transfer(resolve_export(model, get_base(ctx)), backend=backend, provider=provider, threads=n_threads, batch_size=n_batch,
                 precision=precision, align=not no_align, landmarks=landmarks, detector=detector,
                 alpha_background=alpha_background)
    if any(videos):
        video.transfer_videos(t, job, out, settings, force=force)
        return
    written = _transfer_photos(t, job, out, grid=grid, force=force)
    say(f"wrote {written[0]}" if len(written) == 1 else f"wrote {len(written)} images to {out}")


def _targets(prepared: PreparedJob, out: Path, grid: bool) -> list[Path]:
    """Output files: one per (content, class) pair, per (photo, class) with paste-back, or the grid."""
    from lordkit.runtime.job import file_label, unique_labels

    job = prepared.job
    paste = job.options.paste_back
    content_labels = unique_labels([file_label(x) for x in prepared.content_labels])
    class_labels = unique_labels([file_label(x) for x in prepared.class_labels])
    photo_labels = unique_labels([file_label(p.stem) for p in job.contents])
    single_known = len(job.contents) == 1 and job.n_classes == 1 and not (job.options.all_faces and not paste)
    layout = _layout(out, single_known, grid)
    if layout == "file":
        return [out]
    if grid:
        return [out / "transfer_grid.png"]
    if paste:
        return [out / f"{a}__{c}.png" for a in photo_labels for c in class_labels]
    return [out / f"{a}__{c}.png" for a in content_labels for c in class_labels]


def _transfer_photos(t: Transfer, job: TransferJob, out: Path, *, grid: bool, force: bool) -> list[Path]:
    """Cut the inputs, refuse existing outputs, then write each result as soon as it is complete."""
    from lordkit.console import make_progress
    from lordkit.runtime import Prepared
    from lordkit.runtime.job import file_label, pair_index, unique_labels
    from lordkit.runtime.transfer import PastedPhoto
    from lordkit.viz import save_png, transfer_grid

    prepared = t.prepare_job(job)
    targets = _targets(prepared, out, grid)
    refuse_existing(targets, force)
    m = len(prepared.classes)
    written: list[Path] = []
    crops = {}  # the grid's cells: (content, class) -> uint8 crop
    with make_progress(transient=True) as progress:
        task = progress.add_task("transfer", total=prepared.n_pairs, unit="img")
        for r in t.run(prepared, advance=lambda n: progress.advance(task, n)):
            if grid:
                crops[(r.content, r.klass)] = r.image
            else:
                first = r.photo if isinstance(r, PastedPhoto) else r.content
                written.append(save_png(targets[pair_index(first, r.klass, m)], r.image))
    if grid:
        n = len(prepared.contents)
        classes = [c.image if isinstance(c, Prepared) else None for c in prepared.classes]  # bank rows: no picture
        sheet = transfer_grid([c.image for c in prepared.contents], classes,
                              [[crops[(i, j)] for i in range(n)] for j in range(m)], cell=max(64, t.img_size),
                              row_labels=["", *unique_labels([file_label(x) for x in prepared.class_labels])],
                              col_labels=["", *unique_labels([file_label(x) for x in prepared.content_labels])])
        written.append(save_png(targets[0], sheet))
    return written


def register(app: typer.Typer) -> None:
    app.command("transfer")(transfer)
