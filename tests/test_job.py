"""The transfer request (lordkit.runtime.job) and the typed errors every front end words for itself."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import typer

from lordkit.cli.common import CLI_HINTS, CLI_OPTIONS, handle_errors
from lordkit.errors import (BadInput, Hint, Interrupted, LordkitError, NoFace, OutputExists, Terminated, TooLarge,
                            UnknownClass, Unsupported)
from lordkit.runtime.job import (PhotoGroups, TransferJob, TransferOptions, by_class, chunks, file_label, pair_codes,
                                 pair_index, pair_of, result_name, unique_labels)


class FakeBundle:
    """The part of a runtime Bundle a job reads."""

    def __init__(self, face: bool, names=("circle", "square", "star")):
        self.is_face = face
        self.class_names = list(names)
        self.model_name = "x"

    def class_id(self, ref):
        if isinstance(ref, int):
            if not 0 <= ref < len(self.class_names):
                raise UnknownClass(f"class id {ref} is out of range")
            return ref
        if ref not in self.class_names:
            raise UnknownClass(f"unknown class name {ref!r}")
        return self.class_names.index(ref)


def _error(job: TransferJob, bundle=None) -> LordkitError:
    with pytest.raises(LordkitError) as info:
        job.check(bundle)
    return info.value


# -- checks ----------------------------------------------------------------------------------------


def test_a_job_needs_contents_and_classes() -> None:
    e = _error(TransferJob(contents=[], class_ids=[0]))
    assert type(e) is BadInput and e.hint is Hint.GIVE_CONTENT
    e = _error(TransferJob(contents=["a.jpg"]))
    assert type(e) is BadInput and e.hint is Hint.GIVE_CLASS
    assert e.words(CLI_HINTS, CLI_OPTIONS) == "give at least one class: --class REF.jpg, --class-id N or --class-name NAME"
    TransferJob(contents=["a.jpg"], class_names=["star"]).check(FakeBundle(face=False))  # nothing to refuse


def test_paste_back_needs_alignment_in_every_front_ends_words() -> None:
    from lordkit.serve.service import problem

    e = _error(TransferJob(contents=["a.jpg"], class_ids=[0], options=TransferOptions(paste_back=True, align=False)))
    assert isinstance(e, BadInput)
    assert e.words(CLI_HINTS, CLI_OPTIONS) == ("--paste-back needs faces found in the photos; it cannot be combined "
                                               "with --no-align")
    assert problem(e).message == "paste_back needs faces found in the photos; it cannot be combined with align=false"
    assert problem(e).status == 400
    assert str(e) == "paste_back=True needs faces found in the photos; it cannot be combined with align=False"


@pytest.mark.parametrize("option", ["paste_back", "all_faces"])
def test_face_options_need_a_face_model(option: str) -> None:
    job = TransferJob(contents=["a.jpg"], class_ids=[0], options=TransferOptions(**{option: True}))
    job.check(FakeBundle(face=True))
    e = _error(job, FakeBundle(face=False))
    assert isinstance(e, Unsupported) and e.options == (option,)
    assert e.words(CLI_HINTS, CLI_OPTIONS) == f"{CLI_OPTIONS[option]} needs a face model; the export 'x' has no face template"


def test_class_ids_and_names_are_checked_against_the_bank() -> None:
    bank = FakeBundle(face=False)
    job = TransferJob(contents=["a.jpg"], class_ids=[2, 0], class_names=["square"])
    assert job.bank_rows(bank) == [2, 0, 1]  # ids first, then names
    assert job.class_labels(bank, ["ref"]) == ["ref", "star", "circle", "square"]  # images, ids, names
    assert isinstance(_error(TransferJob(contents=["a"], class_ids=[3]), bank), UnknownClass)
    assert isinstance(_error(TransferJob(contents=["a"], class_names=["blob"]), bank), UnknownClass)


# -- the pair order --------------------------------------------------------------------------------


@pytest.mark.parametrize("n,m", [(1, 1), (3, 1), (1, 4), (3, 4)])
def test_pair_order_is_content_major_everywhere(n: int, m: int) -> None:
    cc = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # content i: row of i
    kc = 100 + np.arange(m, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # class j: row of 100 + j
    c_rows, k_rows = pair_codes(cc, kc)
    assert len(c_rows) == len(k_rows) == n * m
    for p in range(n * m):
        i, j = pair_of(p, m)
        assert pair_index(i, j, m) == p
        assert c_rows[p, 0] == i and k_rows[p, 0] == 100 + j
    # A chunked run gives the same rows as the whole.
    parts = [pair_codes(cc, kc, a, b) for a, b in chunks(n * m, 5)]
    assert np.array_equal(np.concatenate([c for c, _ in parts]), c_rows)
    assert np.array_equal(np.concatenate([k for _, k in parts]), k_rows)
    flat = [pair_of(p, m) for p in range(n * m)]
    assert by_class(flat, 0, n, m) == [[(i, j) for i in range(n)] for j in range(m)]
    if n > 1:
        assert by_class(flat, 1, n - 1, m)[0][0] == (1, 0)


def test_a_photo_is_complete_once_all_its_faces_are_generated_in_every_class() -> None:
    groups = PhotoGroups(photo_of=[0, 0, 1, 2, 2, 2], n_classes=2)  # photo 0: two faces, 1: one, 2: three
    assert list(groups.completed(3)) == []  # faces 0 and 1 of photo 0 need 4 pairs
    assert list(groups.completed(4)) == [(0, [0, 1])]
    assert list(groups.completed(9)) == [(1, [2])]
    assert list(groups.completed(12)) == [(2, [3, 4, 5])]
    assert list(groups.completed(12)) == []


def test_labels_for_file_names() -> None:
    assert file_label("my photo (1).jpg") == "my_photo_1_.jpg"
    assert file_label("../..") == "image"
    assert unique_labels(["a", "b", "a", "a"]) == ["a", "b", "a-2", "a-3"]
    assert result_name("me", "star") == "me__star"


# -- errors by type --------------------------------------------------------------------------------


@pytest.mark.parametrize("error,status", [
    (NoFace("whatever the text says"), 422), (UnknownClass("x"), 422), (TooLarge("no face found in x"), 413),
    (Unsupported("x"), 400), (BadInput("MP limit"), 400), (LordkitError("x"), 400)])
def test_the_service_chooses_statuses_by_type_never_by_text(error: LordkitError, status: int) -> None:
    from lordkit.serve.service import problem

    assert problem(error).status == status


def test_a_hint_is_worded_by_each_front_end() -> None:
    from lordkit.serve.service import problem

    e = NoFace("no face found in me.jpg", hint=Hint.NO_ALIGN)
    assert e.words(CLI_HINTS, CLI_OPTIONS) == "no face found in me.jpg; pass --no-align for pre-aligned images"
    assert problem(e).message == "no face found in me.jpg; send align=false for pre-aligned crops"
    assert str(e) == "no face found in me.jpg; pass align=False for pre-aligned images"
    assert problem(NoFace("no face found in /proc/self/fd/7"), rename=("/proc/self/fd/7", "content[0]")).message \
        == "no face found in content[0]"


@pytest.mark.parametrize("raised,code,line", [
    (OutputExists("output x already exists; pass --force to replace it"), 2, "error: output x already exists"),
    (Interrupted(SimpleNamespace(n_frames=3), KeyboardInterrupt()), 130, "error: interrupted"),
    (Interrupted(SimpleNamespace(n_frames=3), Terminated()), 143, "error: terminated (SIGTERM)"),
    (Terminated(), 143, "error: terminated (SIGTERM); nothing was left half-written"),
])
def test_the_cli_exit_status_and_line_follow_the_type(raised: BaseException, code: int, line: str, capsys) -> None:
    @handle_errors
    def command() -> None:
        raise raised

    with pytest.raises(typer.Exit) as info:
        command()
    assert info.value.exit_code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line)
    if isinstance(raised, Interrupted):
        assert err[0] == line  # what was kept is the command's to say; no "nothing was left half-written"
