"""A transfer request, the one definition every front end builds: what to draw (contents), in which
classes, with which options; its checks; the order of its class sources and of its pairs; and the
grouping of faces for paste-back.

    job = TransferJob(contents=["me.jpg"], class_images=["ref.jpg"], class_ids=[3],
                      options=TransferOptions(paste_back=True))
    job.check(bundle)                     # typed errors (lordkit.errors) before any work

The photo and video commands, the video pipeline, `lordkit serve` and `Transfer.transfer` follow it:
- class sources come in one order: reference images first, then class ids, then class names (grid
  rows, file names and the service's `classes` list follow it);
- N contents x M classes make N * M pairs, content-major: pair p is content p // M in class p % M;
- with paste-back, a photo is complete once every face cut from it is generated in every class.
Nothing here runs a network: `lordkit.runtime.Transfer` runs a job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from lordkit.errors import BadInput, Hint, Unsupported

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class TransferOptions:
    """How contents are cut from their photos and where results go."""

    align: bool = True  # face models: find and align faces (False: the inputs are aligned crops)
    all_faces: bool = False  # face models: every face of each photo, not only the largest
    paste_back: bool = False  # face models: the generated face pasted back into its photo


@dataclass
class TransferJob:
    """Every content drawn in every class.

    contents: content sources (photo paths, arrays, prepared crops, video inputs: the front end's kind).
    class_images: class reference sources of the same kinds; class_ids / class_names: rows of the
    export's class bank.
    """

    contents: Sequence[Any]
    class_images: Sequence[Any] = ()
    class_ids: Sequence[int] = ()
    class_names: Sequence[str] = ()
    options: TransferOptions = field(default_factory=TransferOptions)

    @property
    def n_classes(self) -> int:
        return len(self.class_images) + len(self.class_ids) + len(self.class_names)

    @property
    def n_pairs(self) -> int:
        """Pairs before faces are counted (one content per source)."""
        return len(self.contents) * self.n_classes

    def check(self, bundle: Any = None) -> None:
        """The request's own rules; with the export's Bundle also the model's (face options need a face
        model, ids and names must be in the class bank). Raises BadInput, Unsupported or UnknownClass."""
        if not len(self.contents):
            raise BadInput("give at least one content image", hint=Hint.GIVE_CONTENT)
        self.check_classes()
        o = self.options
        if o.paste_back and not o.align:
            raise BadInput("{0} needs faces found in the photos; it cannot be combined with {1}",
                           options=("paste_back", "no_align"))
        if bundle is None:
            return
        if not bundle.is_face:
            for option, used in (("paste_back", o.paste_back), ("all_faces", o.all_faces)):
                if used:
                    raise Unsupported(f"{{0}} needs a face model; the export {bundle.model_name!r} has no face template",
                                      options=(option,))
        self.bank_rows(bundle)

    def check_classes(self) -> None:
        """A request for class codes alone needs a class source, as a transfer does."""
        if not self.n_classes:
            raise BadInput("give at least one class", hint=Hint.GIVE_CLASS)

    def bank_rows(self, bundle: Any) -> list[int]:
        """Class-bank rows of the class ids, then the class names (UnknownClass for a bad one)."""
        return [bundle.class_id(int(i)) for i in self.class_ids] + [bundle.class_id(n) for n in self.class_names]

    def class_labels(self, bundle: Any, image_labels: Sequence[str]) -> list[str]:
        """Labels of the class sources in their order: the reference images' labels, then the class
        bank's names of the ids, then the names as given."""
        return [*image_labels, *(bundle.class_names[bundle.class_id(int(i))] for i in self.class_ids),
                *self.class_names]


# -- the pair order --------------------------------------------------------------------------------


def pair_index(content: int, klass: int, n_classes: int) -> int:
    """The flat index of (content, class): pairs are content-major."""
    return content * n_classes + klass


def pair_of(p: int, n_classes: int) -> tuple[int, int]:
    """(content, class) of flat pair p."""
    return divmod(p, n_classes)


def pair_codes(content_codes: np.ndarray, class_codes: np.ndarray, start: int = 0,
               stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The generator's inputs for flat pairs start..stop-1: (content codes, class codes), row per pair."""
    cc = np.asarray(content_codes, np.float32)
    kc = np.asarray(class_codes, np.float32)
    m = len(kc)
    p = np.arange(start, len(cc) * m if stop is None else stop)
    return cc[p // m], kc[p % m]


def chunks(n_pairs: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive runs of at most batch_size pairs."""
    for a in range(0, n_pairs, batch_size):
        yield a, min(a + batch_size, n_pairs)


def by_class(flat: Sequence[Any], first_content: int, n_contents: int, n_classes: int) -> list[list[Any]]:
    """Results of contents first..first+n-1 out of a flat pair list, as [class][content]."""
    return [[flat[pair_index(first_content + i, j, n_classes)] for i in range(n_contents)]
            for j in range(n_classes)]


# -- paste-back: faces of one photo ------------------------------------------------------------------


class PhotoGroups:
    """Which contents came from which photo, and when a photo is complete: once all its faces are
    generated in every class (pairs arrive in pair order)."""

    def __init__(self, photo_of: Sequence[int], n_classes: int):
        self.n_classes = n_classes
        self.faces_of: dict[int, list[int]] = {}
        for i, k in enumerate(photo_of):
            self.faces_of.setdefault(k, []).append(i)
        self._next = 0  # photos complete in input order

    def completed(self, n_pairs_done: int) -> Iterator[tuple[int, list[int]]]:
        """(photo, its content indices) for each photo completed by the first n_pairs_done pairs."""
        while self._next in self.faces_of and n_pairs_done >= (self.faces_of[self._next][-1] + 1) * self.n_classes:
            yield self._next, self.faces_of[self._next]
            self._next += 1


# -- labels for file names ---------------------------------------------------------------------------


def file_label(label: str) -> str:
    """A label usable in a file name: anything but letters, digits, '.', '_' and '-' becomes '_'."""
    return _UNSAFE.sub("_", label).strip("._") or "image"


def unique_labels(labels: Sequence[str]) -> list[str]:
    """Make labels distinct (a.jpg from two folders, a class given twice): later ones get -2, -3, ..."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        k = seen.get(label, 0) + 1
        seen[label] = k
        out.append(label if k == 1 else f"{label}-{k}")
    return out


def result_name(content_label: str, class_label: str) -> str:
    """The name of one pair's result: <content>__<class>."""
    return f"{content_label}__{class_label}"


__all__ = ["TransferOptions", "TransferJob", "PhotoGroups", "pair_index", "pair_of", "pair_codes", "chunks",
           "by_class", "file_label", "unique_labels", "result_name"]
