"""Usage mistakes through the console script's entry point: one `error:` line naming --help, exit 2."""

import pytest

from lordkit.cli.app import main

CASES = [
    (["bench", "--backend", "ort"], ["No such option: --backend", "--backends", "lordkit bench --help"]),
    (["transfer"], ["Missing argument", "lordkit transfer --help"]),
    (["train", "-dn"], ["requires an argument"]),
    (["preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "abc"], ["--img-size", "integer"]),
    (["nonsense"], ["No such command 'nonsense'", "lordkit --help"]),
]


@pytest.mark.parametrize("args,expected", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_usage_mistake_is_one_line(args, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["--base-dir", str(tmp_path), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert all(part in err[0] for part in expected), err[0]


def test_help_and_version_still_exit_zero(capsys):
    for args in (["--version"], ["export", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 0
    assert "--model-name" in capsys.readouterr().out
