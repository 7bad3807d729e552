"""Video transfer, torch-free: `transfer_video(transfer, video_input("clip.mp4"), class_codes, [out])`.

Video I/O goes through PyAV (the `video` extra: FFmpeg inside its wheel; H.264 out, source
timestamps and audio kept, rotation applied); without it through OpenCV (no audio, constant rate).
PyAV is imported only when a video is opened, so `import lordkit.runtime` works without it.
See docs/video.md.
"""

from lordkit.runtime.video.oneeuro import OneEuroFilter
from lordkit.runtime.video.pipeline import VideoResult, paste_region, transfer_video
from lordkit.runtime.video.sources import (SEQUENCE_FPS, VIDEO_EXTENSIONS, Frame, SourceInfo, VideoInput,
                                           check_video_file, have_pyav, open_reader, video_input)
from lordkit.runtime.video.tracking import DETECT_EVERY, FaceTracker, TrackedFace
from lordkit.runtime.video.writers import open_writer, video_encoder

__all__ = ["OneEuroFilter", "VideoResult", "transfer_video", "paste_region", "VideoInput", "video_input",
           "check_video_file", "have_pyav", "open_reader", "open_writer", "video_encoder", "Frame", "SourceInfo",
           "FaceTracker", "TrackedFace", "DETECT_EVERY", "SEQUENCE_FPS", "VIDEO_EXTENSIONS"]
