"""Torch-free inference: run a lordkit export with onnxruntime, OpenCV and dlib.

    from lordkit.runtime import Transfer
    t = Transfer("exports/celeba64")                       # checks the export, opens the sessions
    face = t.prepare("me.jpg")[0]                          # aligned crop (face models) or centre square
    out = t.transfer([face], ["ref.jpg", 3, "00012"])      # (1, 3, H, W, C) float32 in [0, 1]
    photo = t.paste_back(face, out[0, 0])                  # the generated face in the original photo

    job = TransferJob(["a.jpg", "b.jpg"], class_ids=[3], options=TransferOptions(paste_back=True))
    for result in t.run(t.prepare_job(job)):              # PastedPhoto / PairImage, as each is complete
        ...

Nothing here imports torch (edge devices have none); see docs/runtime.md.
"""

from lordkit.runtime.align import Prepared, Preparer, paste_back
from lordkit.runtime.bundle import FORMAT, Bundle, onnx_metadata, resolve_export
from lordkit.runtime.images import MAX_PIXELS, LoadedImage, load_image, to_uint8_image
from lordkit.runtime.job import TransferJob, TransferOptions
from lordkit.runtime.session import Device, OrtModel, select_device
from lordkit.runtime.transfer import PairImage, PastedPhoto, PreparedJob, Transfer, print_warning

__all__ = ["Transfer", "TransferJob", "TransferOptions", "PreparedJob", "PairImage", "PastedPhoto", "Bundle",
           "Prepared", "Preparer", "OrtModel", "Device", "LoadedImage", "FORMAT", "MAX_PIXELS", "load_image", "paste_back", "resolve_export", "select_device", "to_uint8_image",
           "onnx_metadata", "print_warning"]
