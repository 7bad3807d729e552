"""benchmarks/encoder_alone.py: a stage-2 encoder trained alone on a stage-1 model's codes, plain and centred."""

import numpy as np
import pytest
import torch

from conftest import load_benchmark
from lordkit.data.splits import split_samples
from lordkit.modeldir import load_latent
from lordkit.training import train_latent
from lordkit.training.amortized import channel_means
from test_training import data, quiet, tiny_cfg  # noqa: F401  (data: a fixture)


def test_both_forms_are_checked_from_the_same_start(data, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LORDKIT_RESULTS_DIR", str(tmp_path / "results"))
    train_latent(data, tmp_path / "m", tiny_cfg("latent.n_epochs=1"), **quiet())
    figures = load_benchmark("encoder_alone").main(["--model-dir", str(tmp_path / "m"), "--data", str(data.path),
                                                    "--epochs", "3", "--check-every", "2"])
    assert figures["epochs"] == [0, 2, 3]
    assert len(figures["plain"]) == len(figures["centred"]) == 3
    assert all(np.isfinite(figures["plain"] + figures["centred"]))
    assert figures["plain"][0] != figures["centred"][0]  # the same weights, inputs less their mean
    assert figures["mean"] == pytest.approx(list(channel_means(data)))
    with torch.no_grad():
        codes = load_latent(tmp_path / "m").class_embedding(torch.from_numpy(np.asarray(data.class_ids)).long())
    assert figures["mean_code_error"] == pytest.approx(float((codes - codes.mean(0)).pow(2).mean()), rel=1e-5)
    assert not (tmp_path / "results").exists()  # main() called from Python records nothing


@pytest.mark.parametrize("case", ["no model", "other data"])
def test_a_wrong_model_or_data_is_one_error_line(data, tmp_path, capsys, case):  # noqa: F811
    train_latent(data, tmp_path / "m", tiny_cfg("latent.n_epochs=1"), **quiet())
    split_samples(data, tmp_path / "train", tmp_path / "test", 0.25)
    model, other = (tmp_path / "none", data.path) if case == "no model" else (tmp_path / "m", tmp_path / "test")
    capsys.readouterr()  # what training said
    with pytest.raises(SystemExit) as e:
        load_benchmark("encoder_alone").main(["--model-dir", str(model), "--data", str(other), "--epochs", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
