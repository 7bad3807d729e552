"""The video branch of `lordkit transfer`: one output video per (input, class), see docs/video.md."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lordkit.errors import BadInput, LordkitError

from .common import as_int, refuse_existing, say

if TYPE_CHECKING:
    from lordkit.runtime import Transfer
    from lordkit.runtime.job import TransferJob
    from lordkit.runtime.video import VideoInput

EXIT_BROKEN_SOURCE = 3  # the outputs were written, but the source broke off before its end
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi")
FALLBACK_WARNING = ("PyAV is not installed (pip install 'lordkit[video]'): videos go through OpenCV, so audio is "
                    "dropped, the frame rate is made constant and rotation is applied only as OpenCV does")


@dataclass(frozen=True)
class VideoSettings:
    """The options that only videos take."""

    out_size: int | None  # non-face models: output side in px (None: the model's size)
    detect_every: int  # face models: search faces every N frames, follow them in between
    smooth: bool  # face models: One Euro smoothing of the alignment


def settings(inputs: list[str], videos: list, *, grid: bool, size: str | None, detect_every: str,
             smooth: bool) -> VideoSettings:
    """The video options, checked before any file is opened."""
    if not all(videos):
        photo = next(text for text, v in zip(inputs, videos) if v is None)
        raise BadInput(f"give either photos or videos in one run: {photo} is not a video input")
    if grid:
        raise BadInput("--grid makes one picture of photos; it cannot be used with videos")
    return VideoSettings(out_size=as_int(size, "--size", 8) if size is not None else None,
                         detect_every=as_int(detect_every, "--detect-every", 1), smooth=smooth)


def video_targets(sources: list[VideoInput], class_labels: list[str], out: Path) -> list[list[Path]]:
    """Output files [input][class]: -o itself for one input in one class (unless -o is a directory),
    else <input-stem>__<class>.mp4 in the directory -o, as still images name their PNGs."""
    from lordkit.runtime.job import file_label, unique_labels

    stems = unique_labels([file_label(s.stem) for s in sources])
    if len(sources) == 1 and len(class_labels) == 1 and not out.is_dir():
        if out.suffix.lower() not in VIDEO_SUFFIXES:
            raise LordkitError(f"cannot write {out}: a video output ends in one of {', '.join(VIDEO_SUFFIXES)}")
        return [[out]]
    if out.exists() and not out.is_dir():
        raise LordkitError(f"{out} is a file, but this run writes several videos; give a directory")
    if out.suffix.lower() in VIDEO_SUFFIXES and not out.exists():
        raise LordkitError(f"{out} looks like a file, but this run writes {len(sources) * len(class_labels)} "
                           "videos (one per input and class); give a directory")
    return [[out / f"{stem}__{c}.mp4" for c in class_labels] for stem in stems]


def transfer_videos(t: Transfer, job: TransferJob, out: Path, settings: VideoSettings, *, force: bool) -> None:
    """Transfer every video of the job into every class, one after another, a progress bar per video."""
    from lordkit.console import make_progress
    from lordkit.errors import Interrupted
    from lordkit.runtime.job import file_label, unique_labels
    from lordkit.runtime.video import have_pyav, transfer_video

    job.check(t.bundle)
    aligning = t.is_face and job.options.align
    if aligning and settings.out_size is not None:
        raise BadInput("--size sets the size of a model's results; face models paste them into the full frame")
    class_refs, labels = t.class_sources(job)
    targets = video_targets(list(job.contents), unique_labels([file_label(x) for x in labels]), out)
    refuse_existing([p for row in targets for p in row], force)
    if not have_pyav():
        t.warn(FALLBACK_WARNING)
    kc = t.class_codes(class_refs)
    broken = False
    for source, outputs in zip(job.contents, targets):
        try:
            with make_progress(transient=True) as progress:
                result = transfer_video(t, source, kc, outputs, out_size=settings.out_size,
                                        detect_every=settings.detect_every, all_faces=job.options.all_faces,
                                        smooth=settings.smooth, progress=progress)
        except Interrupted as e:
            if e.partial.n_frames:
                kept = ", ".join(str(p) for p in e.partial.outputs)
                t.warn(f"stopped after {e.partial.n_frames} frames of {source.text}; {kept} holds them "
                       "(finalised, playable)")
            raise
        where = str(outputs[0]) if len(outputs) == 1 else f"{len(outputs)} videos to {outputs[0].parent}"
        audio = {"copy": "audio copied", "aac": "audio re-encoded to AAC", None: "no audio"}[result.audio]
        say(f"wrote {where}: {result.n_frames} frames at {float(result.rate):.3g} fps, {audio} "
            f"({result.encoder}, {result.frames_per_s:.1f} frames/s)")
        if result.n_no_face:
            t.warn(f"{result.n_no_face} of the {result.n_frames} frames of {source.text} have no face; "
                   "they were written unchanged")
        if result.broken:
            t.warn(f"{source.text} broke off: {result.broken}; kept the {result.n_frames} frames read before it")
            broken = True
    if broken:
        raise typer.Exit(EXIT_BROKEN_SOURCE)
