"""The video branch of `lordkit transfer`: one output video per (input, class), see docs/video.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lordkit.errors import LordkitError

from .common import say

if TYPE_CHECKING:
    from lordkit.runtime import Transfer
    from lordkit.runtime.video import VideoInput

EXIT_BROKEN_SOURCE = 3  # the outputs were written, but the source broke off before its end
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi")
FALLBACK_WARNING = ("PyAV is not installed (pip install 'lordkit[video]'): videos go through OpenCV, so audio is "
                    "dropped, the frame rate is made constant and rotation is applied only as OpenCV does")


def video_targets(sources: list[VideoInput], class_labels: list[str], out: Path) -> list[list[Path]]:
    """Output files [input][class]: -o itself for one input in one class (unless -o is a directory),
    else <input-stem>__<class>.mp4 in the directory -o, as still images name their PNGs."""
    from .transfer import _safe, _unique

    stems = _unique([_safe(s.stem) for s in sources])
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


def run_videos(t: Transfer, sources: list[VideoInput], class_refs: list, class_labels: list[str],
               targets: list[list[Path]], *, out_size: int | None, detect_every: int, all_faces: bool,
               smooth: bool) -> None:
    """Transfer every video into every class, one after another, with a progress bar per video."""
    from lordkit.console import make_progress
    from lordkit.runtime.video import have_pyav, transfer_video

    if not have_pyav():
        t.warn(FALLBACK_WARNING)
    kc = t.class_codes(class_refs)
    broken = False
    for source, outputs in zip(sources, targets):
        try:
            with make_progress(transient=True) as progress:
                result = transfer_video(t, source, kc, outputs, out_size=out_size, detect_every=detect_every,
                                        all_faces=all_faces, smooth=smooth, progress=progress)
        except KeyboardInterrupt as e:
            n = getattr(e, "video_frames", 0)
            if n:
                kept = ", ".join(str(p) for p in getattr(e, "video_outputs", []))
                t.warn(f"stopped after {n} frames of {source.text}; {kept} holds them (finalised, playable)")
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
