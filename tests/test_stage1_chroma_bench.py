"""benchmarks/stage1_chroma.py: how much of the images' hue stage 1 draws."""

import pytest
import torch

from conftest import load_benchmark
from test_training import data  # noqa: F401  (data: a fixture)


def test_chroma_share_of_a_copy_a_grey_image_and_half_the_colour():
    bench = load_benchmark("stage1_chroma")
    imgs = torch.rand(4, 3, 8, 8)
    grey = imgs.mean(1, keepdim=True).expand_as(imgs)
    half = grey + 0.5 * (imgs - grey)
    for out, share in ((imgs, 1.0), (grey, 0.0), (half, 0.5)):
        kept, total = bench.chroma_sums(imgs, out)
        assert kept / total == pytest.approx(share, abs=1e-5)


def test_a_short_run_measures_and_restores_the_hue_gain(data, tmp_path, monkeypatch):  # noqa: F811
    import lordkit.training.init as init

    monkeypatch.setenv("LORDKIT_RESULTS_DIR", str(tmp_path / "results"))
    bench = load_benchmark("stage1_chroma")
    figures = bench.main(["--data", str(data.path), "--work", str(tmp_path / "m"), "--epochs", "1",
                          "--hue-gain", "6", "--set", "latent.pca_blur=0.25"])
    assert figures["epochs"] == 1 and figures["hue_gain"] == 6
    assert -1.0 < figures["chroma_kept"] < 2.0
    assert init.HUE_GAIN == 3.0  # set for the run only
    hue = figures["hue_from_codes"]  # the fixture's hue is a content factor of 2 levels
    assert hue["chance"] == pytest.approx(0.5, abs=0.05)
    assert hue["pair"] > 0.9  # after one epoch the pair is still about where it started: each image's hue
    assert 0 <= hue["other_dims"] <= 1
    assert (tmp_path / "m" / "latent.safetensors").exists()
    assert not (tmp_path / "results").exists()  # main() called from Python records nothing


def test_bad_input_is_one_line(data, tmp_path, capsys):  # noqa: F811
    bench = load_benchmark("stage1_chroma")
    (tmp_path / "file").write_text("")
    for args in (["--data", str(tmp_path / "none"), "--epochs", "1"],
                 ["--data", str(data.path), "--epochs", "1", "--set", "latent.pca_blur=2"],
                 ["--data", str(data.path), "--epochs", "1", "--work", str(tmp_path / "file" / "m")]):  # a file's child
        with pytest.raises(SystemExit) as e:
            bench.main(["--work", str(tmp_path / "m"), *args])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    for args in (["--seconds", "-1"], ["--epochs", "0"], ["--hue-gain", "nan", "--epochs", "1"], []):
        with pytest.raises(SystemExit) as e:
            bench.main(["--data", str(data.path), "--work", str(tmp_path / "m"), *args])
        assert e.value.code == 2


def test_no_hue_figure_where_the_codes_have_no_hue_pair(data, tmp_path):  # noqa: F811
    bench = load_benchmark("stage1_chroma")
    for setting in ("model.content_dim=2", "latent.pca_features=deviation"):
        figures = bench.main(["--data", str(data.path), "--work", str(tmp_path / "m"), "--epochs", "1",
                              "--set", setting])
        assert "hue_from_codes" not in figures, setting
