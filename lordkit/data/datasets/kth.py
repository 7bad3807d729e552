"""KTH human actions (Schuldt et al. 2004) from the distributed .avi files: class = person, grey frames.

Files are named person01_handwaving_d1_uncomp.avi (25 persons x 6 actions x 4 scenarios: d1
outdoors, d2 outdoors with scale variation, d3 outdoors in different clothes, d4 indoors), either
directly in the given folder or in per-action subfolders (handwaving/, boxing/, ...) as unpacked
from the per-action zips. Every frame (or every `frame_step`-th) of each selected video becomes an
image; the 160x120 frames are centre-cropped to 120x120 by the pipeline.

As in the LORD reference, only the handwaving action in scenario d4 is read by default:
`--opt actions=handwaving` (comma list, or "all"), `--opt scenarios=d4` (comma list, or "all"),
`--opt frame_step=1`. Per image the store keeps `frame_index` (frame number in its video) and
`video_index` (index into meta.extra["videos"], the video paths relative to the dataset folder).
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from lordkit.data.sources import Chunk, DecodeError, Loaded, Options, Source, register, sorted_class_map
from lordkit.errors import LordkitError

ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
SCENARIOS = ("d1", "d2", "d3", "d4")
_NAME_RE = re.compile(r"^(person\d+)_([a-z]+)_(d\d+)(?:_uncomp)?\.avi$", re.IGNORECASE)


def _choice_list(opts: Options, key: str, default: str, allowed: tuple[str, ...]) -> list[str]:
    raw = opts.get(key, default)
    values = [v.strip().lower() for v in raw.split(",") if v.strip()]
    if values == ["all"]:
        return list(allowed)
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise LordkitError(f"--opt {key}={raw!r}: expected a comma list of {', '.join(allowed)} or 'all'")
    return sorted(set(values))


def _frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()


def _load(path: Path, class_id: int, video_index: int, frame_step: int) -> Loaded:
    cap = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    indices: list[int] = []
    try:
        if not cap.isOpened():
            raise DecodeError("cannot be opened as a video")
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if index % frame_step == 0:
                if frame.ndim == 3:
                    frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)  # OpenCV decodes KTH's grey video as BGR
                if frame.dtype != np.uint8 or frame.ndim != 2:
                    raise DecodeError(f"frame {index} is {frame.dtype} {frame.shape}, expected uint8 grey")
                frames.append(frame)
                indices.append(index)
            index += 1
    finally:
        cap.release()
    if not frames:
        raise DecodeError("has no decodable frames")
    return Loaded(images=frames, class_ids=class_id,
                  per_image={"frame_index": np.asarray(indices, np.int64), "video_index": video_index})


@register("kth", "KTH action videos, .avi files (class = person; default handwaving, scenario d4, grey)")
def open_kth(path: Path, opts: Options) -> Source:
    actions = _choice_list(opts, "actions", "handwaving", ACTIONS)
    scenarios = _choice_list(opts, "scenarios", "d4", SCENARIOS)
    frame_step = opts.get("frame_step", 1, int)
    if frame_step < 1:
        raise LordkitError(f"--opt frame_step={frame_step}: must be at least 1")
    if not path.is_dir():
        raise LordkitError(f"KTH folder not found: {path} (expected the .avi files, e.g. person01_handwaving_d4_uncomp.avi)")

    all_videos = sorted((p for p in path.rglob("*.avi") if p.is_file() and _NAME_RE.match(p.name)),
                        key=lambda p: p.name.lower())
    if not all_videos:
        raise LordkitError(f"no KTH videos in {path}: expected files like person01_handwaving_d4_uncomp.avi")
    videos = []
    for p in all_videos:
        person, action, scenario = _NAME_RE.match(p.name).groups()
        if action.lower() in actions and scenario.lower() in scenarios:
            videos.append((p, person.lower()))
    if not videos:
        raise LordkitError(f"none of the {len(all_videos)} KTH videos in {path} is of actions={','.join(actions)} "
                           f"scenarios={','.join(scenarios)}")

    names, ids = sorted_class_map(person for _, person in videos)
    chunks = []
    for i, (p, person) in enumerate(videos):
        n_frames = _frame_count(p)  # from the container header: approximate, for progress and failure counts
        n_expected = max(1, -(-n_frames // frame_step))
        chunks.append(Chunk(str(p), n_expected, partial(_load, p, ids[person], i, frame_step)))
    return Source(
        class_names=names, channels=1, chunks=chunks, square="center",
        extra={"videos": [p.relative_to(path).as_posix() for p, _ in videos], "actions": actions,
               "scenarios": scenarios, "frame_step": frame_step},
    )
