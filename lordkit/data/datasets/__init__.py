"""Readers of each supported dataset's official files; importing this package registers them all."""

from lordkit.data.datasets import folder, synthetic  # noqa: F401

for _name in ("mnist", "smallnorb", "cars3d", "shapes3d", "celeba", "kth", "rafd"):
    try:
        __import__(f"lordkit.data.datasets.{_name}")
    except ModuleNotFoundError as _e:  # a reader still being written, or an optional dependency missing
        if _e.name != f"lordkit.data.datasets.{_name}":
            raise
