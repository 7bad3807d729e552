"""Readers of each supported dataset's official files; importing this package registers them all.

Optional dependencies (scipy for cars3d, h5py for shapes3d) are imported inside their readers, so
every reader is listed even on a runtime-only install.
"""

from lordkit.data.datasets import (cars3d, celeba, folder, kth, mnist, rafd, shapes3d,  # noqa: F401
                                   smallnorb, synthetic)
