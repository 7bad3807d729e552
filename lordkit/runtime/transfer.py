"""`Transfer`: class/content transfer from an export dir with onnxruntime, in batches, without torch.

For N content images and M class sources the work is:
- the content encoder once per content image (in chunks of batch_size),
- the class encoder once per class *image*; class ids and names take their row of the class bank,
- the generator once per (content, class) pair, on chunks of batch_size pairs.
The result is (N, M, H, W, C) float32 in [0, 1]: result[i, j] is content i drawn in class j.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from lordkit.errors import BadInput
from lordkit.runtime.align import EYE_WEIGHT, Prepared, Preparer, paste_back
from lordkit.runtime.bundle import Bundle
from lordkit.runtime.images import to_model_input, to_uint8_image
from lordkit.runtime.job import PhotoGroups, TransferJob, chunks, pair_codes, pair_of
from lordkit.runtime.backends import check_backend, check_precision, open_backend
from lordkit.runtime.session import Device, select_device

ImageLike = Any  # a Prepared, an (H, W[, C]) array, or a path (str / Path)
ClassLike = Any  # a class id (int), a class name (str), a Prepared, an array, or an image path


@dataclass
class PreparedJob:
    """A TransferJob with its inputs prepared: the model inputs and labels, in the job's orders."""

    job: TransferJob
    contents: list[Prepared]  # in input order, all faces of a photo together
    photo_of: list[int]  # index of the input each content was cut from
    classes: list[Prepared | int]  # the reference images' inputs, then class-bank rows (ids, then names)
    class_labels: list[str]

    @property
    def content_labels(self) -> list[str]:
        return [c.label for c in self.contents]

    @property
    def n_pairs(self) -> int:
        return len(self.contents) * len(self.classes)


@dataclass
class PairImage:
    """One pair's result: content `content` drawn in class `klass`, the model's uint8 crop."""

    content: int
    klass: int
    image: np.ndarray


@dataclass
class PastedPhoto:
    """Paste-back's result: input photo `photo` with each of its faces drawn in class `klass`."""

    photo: int
    klass: int
    image: np.ndarray


def print_warning(message: str) -> None:
    """The default warning sink: one `warning: ...` line on stderr (never wrapped)."""
    from lordkit.console import console

    console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True, style="yellow")


class Transfer:
    """Run a lordkit export: encode contents and classes, generate every pair, paste faces back.

    export: an export dir (or an open Bundle).
    backend: "onnxruntime" (default), "openvino" (the same ONNX files on OpenVINO's CPU plugin) or
        "torch" (the export's AOTInductor .pt2 packages; needs torch). See lordkit.runtime.backends.
    provider: "auto" (CUDA when onnxruntime offers it, else CPU), "cpu", "cuda" or "cuda:N"; CUDA
        asked for but missing gives a warning and CPU.
    threads: onnxruntime intra-op threads (None: onnxruntime's default, one per physical core).
    batch_size: images (encoders) or pairs (generator) per onnxruntime call.
    io_binding: run through device buffers bound with IOBinding; None = on CUDA only.
    precision: "fp32", or "fp16" for the *.fp16.onnx files of an export made with --fp16.
    optimized: run the *.opt.onnx files when the export has them.
    verify: how the export is checked on opening: "all" files hashed, "used" ones only, or "none".
    align: align faces for face models (False: images are crops aligned already). Non-face models
        never align.
    landmarks: "68", "5", or the path of a dlib shape predictor .dat file; detector: "hog" or "cnn".
    eye_weight: weight of the eyes in the alignment fit (1 = plain least squares on all points).
    alpha_background: "white" or "black" under transparent pixels.
    warn: called with one line per warning (default: `warning: ...` on stderr).
    """

    def __init__(self, export: str | os.PathLike | Bundle, *, backend: str = "onnxruntime", provider: str = "auto",
                 threads: int | None = None,
                 batch_size: int = 32, io_binding: bool | None = None, precision: str = "fp32",
                 optimized: bool = True, verify: str = "all", align: bool = True, landmarks: str | Path = "68",
                 detector: str = "hog", eye_weight: float = EYE_WEIGHT, alpha_background: str = "white",
                 warn: Callable[[str], None] | None = print_warning):
        if int(batch_size) < 1:
            raise BadInput(f"batch size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.warn = warn or (lambda message: None)
        # Cheap checks of names first, then the export (hashing), then the sessions (slowest).
        self.backend = check_backend(backend)
        if self.backend == "onnxruntime":
            select_device(provider)  # an unknown provider name fails before the export is hashed (no warning twice)
        check_precision(self.backend, precision)
        needs = "aoti" if self.backend == "torch" else "onnx"
        self.bundle = export if isinstance(export, Bundle) else Bundle(export, verify=verify, needs=needs)
        b = self.bundle
        self.preparer = Preparer(b.img_size, b.channels, b.face_template, b.face_points, align=align,
                                 landmarks=landmarks, detector=detector, eye_weight=eye_weight,
                                 alpha_background=alpha_background, warn=self.warn)
        self.models: dict[str, Any] = open_backend(b, self.backend, provider=provider, precision=precision,
                                                   optimized=optimized, threads=threads, io_binding=io_binding,
                                                   warn=self.warn)

    # -- properties -----------------------------------------------------------------------------

    @property
    def device(self) -> Device:
        return self.models["generator"].device

    @property
    def img_size(self) -> int:
        return self.bundle.img_size

    @property
    def channels(self) -> int:
        return self.bundle.channels

    @property
    def class_names(self) -> list[str]:
        return self.bundle.class_names

    @property
    def is_face(self) -> bool:
        return self.bundle.is_face

    @property
    def io_binding(self) -> bool:
        return self.models["generator"].io_binding

    # -- inputs ----------------------------------------------------------------------------------

    def prepare(self, source: str | os.PathLike | np.ndarray | Prepared, *, all_faces: bool = False,
                label: str | None = None, align: bool | None = None) -> list[Prepared]:
        """Model inputs from a photo (file or RGB / grey array): aligned faces, or the centre square.
        A Prepared input is its own model input."""
        if isinstance(source, Prepared):
            return [source]
        if isinstance(source, os.PathLike):
            source = Path(source)
        return self.preparer(source, all_faces=all_faces, label=label, align=align)

    def _image(self, item: ImageLike, what: str) -> np.ndarray:
        """One model input as (C, H, W) float32 in [0, 1]."""
        if isinstance(item, (str, os.PathLike)):
            item = self.prepare(Path(item))[0]
        img = item.image if isinstance(item, Prepared) else item
        return to_model_input(img, self.img_size, self.channels, what)

    def _encode(self, network: str, images: Sequence[ImageLike], what: str) -> np.ndarray:
        """Run an encoder over images in chunks of batch_size; (N, dim) float32."""
        model = self.models[network]
        dim = self.bundle.content_dim if network == "content_encoder" else self.bundle.class_dim
        out = np.empty((len(images), dim), np.float32)
        for a in range(0, len(images), self.batch_size):
            chunk = images[a:a + self.batch_size]
            batch = np.stack([self._image(x, f"{what} {a + k}") for k, x in enumerate(chunk)])  # (B, C, H, W)
            out[a:a + len(chunk)] = model(image=batch)
        return out

    def content_codes(self, contents: Sequence[ImageLike]) -> np.ndarray:
        """(N, content_dim): the content encoder once per image."""
        return self._encode("content_encoder", list(contents), "content image")

    def class_codes(self, classes: Sequence[ClassLike]) -> np.ndarray:
        """(M, class_dim): class-bank rows for ids and names, the class encoder once per class image."""
        classes = list(classes)
        codes = np.empty((len(classes), self.bundle.class_dim), np.float32)
        image_at, images = [], []
        names = set(self.class_names)
        for j, ref in enumerate(classes):
            if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
                codes[j] = self.bundle.class_bank[self.bundle.class_id(int(ref))]
            elif isinstance(ref, str) and (ref in names or not Path(ref).is_file()):
                codes[j] = self.bundle.class_bank[self.bundle.class_id(ref)]  # names win over file names
            else:
                image_at.append(j)
                images.append(ref)
        if images:
            codes[image_at] = self._encode("class_encoder", images, "class image")
        return codes

    # -- generation ------------------------------------------------------------------------------

    def generate_iter(self, content_codes: np.ndarray,
                      class_codes: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """Every (content, class) pair in the job's pair order (lordkit.runtime.job), in chunks: yields
        (start, stop, images) with images (stop - start, H, W, C) float32 for flat pairs start..stop-1."""
        generator = self.models["generator"]
        for a, b in chunks(len(content_codes) * len(class_codes), self.batch_size):
            cc, kc = pair_codes(content_codes, class_codes, a, b)
            out = generator(content_code=cc, class_code=kc)  # (B, C, H, W)
            yield a, b, out.transpose(0, 2, 3, 1)

    def transfer(self, contents: Sequence[ImageLike], classes: Sequence[ClassLike]) -> np.ndarray:
        """(N, M, H, W, C) float32: each content image drawn in each class."""
        contents, classes = list(contents), list(classes)
        TransferJob(contents, class_images=classes).check()
        cc = self.content_codes(contents)
        kc = self.class_codes(classes)
        s, c = self.img_size, self.channels
        out = np.empty((len(cc) * len(kc), s, s, c), np.float32)
        for a, b, imgs in self.generate_iter(cc, kc):
            out[a:b] = imgs
        return out.reshape(len(cc), len(kc), s, s, c)

    # -- jobs ------------------------------------------------------------------------------------

    def class_sources(self, job: TransferJob) -> tuple[list[Prepared | int], list[str]]:
        """The job's class sources in its order (reference images' inputs, then bank rows of the ids,
        then of the names) and their labels."""
        images = [self.prepare(ref, align=job.options.align)[0] for ref in job.class_images]
        classes: list[Prepared | int] = [*images, *job.bank_rows(self.bundle)]
        return classes, job.class_labels(self.bundle, [p.label for p in images])

    def prepare_job(self, job: TransferJob) -> PreparedJob:
        """Check the job against this export, then cut its inputs: the class sources, and the largest
        face (or every face) of each content photo, or its centre square."""
        job.check(self.bundle)
        o = job.options
        classes, class_labels = self.class_sources(job)
        contents: list[Prepared] = []
        photo_of: list[int] = []
        for k, source in enumerate(job.contents):
            found = self.prepare(source, all_faces=o.all_faces, align=o.align)
            contents += found
            photo_of += [k] * len(found)
            if o.paste_back and found[0].photo_scale < 1:
                h, w = found[0].photo.shape[:2]
                scale = found[0].photo_scale
                self.warn(f"{source} is about {w / scale:.0f}x{h / scale:.0f} px; "
                          f"the pasted result is written at the working size {w}x{h}")
        return PreparedJob(job=job, contents=contents, photo_of=photo_of, classes=classes, class_labels=class_labels)

    def run(self, prepared: PreparedJob, advance: Callable[[int], None] | None = None
            ) -> Iterator[PairImage | PastedPhoto]:
        """Generate every pair in pair order and yield each result as soon as it is complete: a
        PairImage per pair, or with paste-back a PastedPhoto per (photo, class) once all the photo's
        faces are generated in that class. `advance(n)` is called after each chunk of n pairs."""
        m = len(prepared.classes)
        cc = self.content_codes(prepared.contents)
        kc = self.class_codes(prepared.classes)
        paste = prepared.job.options.paste_back
        groups = PhotoGroups(prepared.photo_of, m)
        kept: dict[tuple[int, int], np.ndarray] = {}  # paste-back: (content, class) -> crop, until its photo is done
        for a, b, imgs in self.generate_iter(cc, kc):
            for p, img in zip(range(a, b), imgs):
                i, j = pair_of(p, m)
                if paste:
                    kept[(i, j)] = to_uint8_image(img)
                else:
                    yield PairImage(i, j, to_uint8_image(img))
            if advance is not None:
                advance(b - a)
            if paste:
                for k, faces in groups.completed(b):
                    for j in range(m):
                        photo = None
                        for i in faces:  # faces pasted one after another into the same photo
                            photo = self.paste_back(prepared.contents[i], kept.pop((i, j)), photo)
                        yield PastedPhoto(k, j, photo)

    def paste_back(self, prepared: Prepared, generated: np.ndarray, photo: np.ndarray | None = None) -> np.ndarray:
        """The photo `prepared` was cut from, with `generated` (a result crop) pasted over its face."""
        return paste_back(prepared, generated, photo)

    def __repr__(self) -> str:
        return (f"Transfer({self.bundle.path}, backend={self.backend}, device={self.device}, io_binding={self.io_binding}, "
                f"batch_size={self.batch_size})")


__all__ = ["Transfer", "PreparedJob", "PairImage", "PastedPhoto", "print_warning"]
