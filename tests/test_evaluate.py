"""Evaluation: leakage is measured on held-out codes; the full report runs on a tiny trained model."""

import json

import cv2
import numpy as np
import pytest
import torch

from lordkit.data.preprocess import preprocess
from lordkit.data.sources import Options
from lordkit.data.store import Dataset
from lordkit.evaluation import TruthLookup, class_check, evaluate, leakage, stratified_folds
from lordkit.errors import BadInput, LordkitError
from lordkit.training import train_amortized, train_latent
from test_training import TINY_DATA, quiet, tiny_cfg


def test_leakage_scores_held_out_codes_not_memorised_ones():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    # Random codes: an MLP can memorise its training part, but held-out accuracy stays near chance.
    r = leakage(rng.normal(size=(400, 16)), labels, n_steps=400, n_repeats=1)
    assert r["n_train"] + r["n_test"] == 400 == r["n_codes"] and r["n_test"] == 80 and r["n_folds"] == 5
    assert len(r["fold_accuracies"]) == 5 and r["accuracy"] == pytest.approx(np.mean(r["fold_accuracies"]), abs=1e-4)
    assert r["accuracy_std"] == pytest.approx(np.std(r["fold_accuracies"]), abs=1e-4)
    assert r["accuracy"] < r["chance"] + 0.15
    assert r["chance"] == np.bincount(labels).max() / 400
    # Codes that carry the label: held-out accuracy is high.
    informative = np.eye(4)[labels] + 0.1 * rng.normal(size=(400, 4))
    r = leakage(informative, labels)
    assert r["accuracy"] > 0.95 and r["chance"] < 0.5


def test_leakage_repeats_the_cross_validation_over_partitions():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 150)
    codes = np.eye(3)[labels] + 1.5 * rng.normal(size=(150, 3))  # partly informative: folds disagree
    once = leakage(codes, labels, seed=4, n_repeats=1, n_steps=60)
    r = leakage(codes, labels, seed=4, n_repeats=3, n_steps=60)
    assert r["n_repeats"] == 3 and len(r["fold_accuracies"]) == 15 and len(r["repeat_accuracies"]) == 3
    assert r["fold_accuracies"][:5] == once["fold_accuracies"]  # the first partition is the single one
    assert r["repeat_accuracies"][0] == pytest.approx(once["accuracy"], abs=1e-4)
    assert r["accuracy"] == pytest.approx(np.mean(r["fold_accuracies"]), abs=1e-4)
    assert r["repeat_std"] == pytest.approx(np.std(r["repeat_accuracies"]), abs=1e-4)
    assert r["fold_accuracies"][5:10] != r["fold_accuracies"][:5]  # another partition, other folds
    assert "repeated over 3 partitions" in r["method"] and "repeated" not in once["method"]
    for bad in (0, -1, 101, 2.5):
        with pytest.raises(BadInput, match="1 to 100 repeats"):
            leakage(codes, labels, n_repeats=bad)


def test_folds_are_stratified_and_cover_every_code():
    labels = np.repeat([0, 1, 2], [50, 30, 7])
    folds = stratified_folds(labels, 5, seed=3)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.sum() == len(labels) and sizes.max() - sizes.min() <= 1
    for value in (0, 1, 2):
        per_fold = np.bincount(folds[labels == value], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1  # every fold gets its share of every label
    assert (stratified_folds(labels, 5, seed=3) == folds).all()


class _Copy:
    """A stand-in model whose 'transfer' returns the content image (which=0) or the class image (1)."""

    def __init__(self, which):
        self.which = which

    def convert(self, xa, xb):
        return (xa, xb)[self.which], None, None


def test_class_check_tells_a_copied_content_from_a_copied_class(tmp_path):
    preprocess("synthetic", None, tmp_path / "s", img_size=32, opts=Options({**TINY_DATA, "n_x": "3"}),
               show_progress=False)
    ds = Dataset(tmp_path / "s")
    idx = np.arange(len(ds))
    keep = class_check(_Copy(0), ds, idx, torch.device("cpu"), n_pairs=64)
    take = class_check(_Copy(1), ds, idx, torch.device("cpu"), n_pairs=64)
    assert keep["real_accuracy"] == take["real_accuracy"] > keep["chance"]
    # Returning the content image: classified as the content's class, every content feature kept.
    assert keep["transferred_as_content_class"] > keep["transferred_as_target_class"]
    assert keep["content_survival"]["mean_corr"] > 0.99
    # Returning the class image: classified as the target class, content features not kept.
    assert take["transferred_as_target_class"] > take["transferred_as_content_class"]
    assert take["content_survival"]["mean_corr"] < 0.9
    assert keep["n_pairs"] == take["n_pairs"] == 64


def test_class_check_real_accuracy_is_repeated_cross_validation(tmp_path):
    preprocess("synthetic", None, tmp_path / "s", img_size=32, opts=Options({**TINY_DATA, "n_x": "3"}),
               show_progress=False)
    ds = Dataset(tmp_path / "s")
    idx = np.arange(len(ds))
    one = class_check(_Copy(0), ds, idx, torch.device("cpu"), n_pairs=16, n_repeats=1)
    three = class_check(_Copy(0), ds, idx, torch.device("cpu"), n_pairs=16, n_repeats=3)
    assert one["n_repeats"] == 1 and one["real_repeat_std"] == 0 and three["n_repeats"] == 3
    # The first of three partitions is the single one; the figure is the mean over all 15 folds.
    parts = three["real_repeat_accuracies"]
    assert len(parts) == 3 and parts[0] == pytest.approx(one["real_accuracy"], abs=1e-4)
    assert three["real_accuracy"] == pytest.approx(np.mean(parts), abs=1e-4)
    assert three["real_repeat_std"] == pytest.approx(np.std(parts), abs=1e-4)
    # The transfer figures do not depend on how the real accuracy is cross-validated.
    assert one["transferred_as_target_class"] == three["transferred_as_target_class"]
    with pytest.raises(BadInput):
        class_check(_Copy(0), ds, idx, torch.device("cpu"), n_pairs=16, n_repeats=0)


def test_truth_lookup_renders_synthetic_and_indexes_others(tmp_path):
    preprocess("synthetic", None, tmp_path / "s", img_size=32, opts=Options(dict(TINY_DATA)), show_progress=False)
    ds = Dataset(tmp_path / "s")
    look = TruthLookup(ds, {})
    for i in (0, 17, len(ds) - 1):
        np.testing.assert_array_equal(look(int(ds.class_ids[i]), int(ds.content_ids[i])), ds.images[i])


def test_evaluate_tiny_model_end_to_end(tmp_path, cli, base):
    preprocess("synthetic", None, base / "data" / "syn", img_size=32, opts=Options(dict(TINY_DATA)),
               show_progress=False)
    ds = Dataset(base / "data" / "syn")
    m = base / "models" / "m"
    train_latent(ds, m, tiny_cfg("latent.n_epochs=2"), **quiet())
    with pytest.raises(LordkitError, match="train-encoders"):
        evaluate(m, ds, data_name="syn")
    train_amortized(ds, m, changes={"n_epochs": 2}, **quiet())
    r = evaluate(m, ds, data_name="syn", n_pairs=64)
    assert 0 <= r["reconstruction"]["l1"] <= 1 and r["reconstruction"]["psnr"] > 0
    leak = r["leakage"]["class_from_content"]
    assert leak["n_codes"] == len(ds) and leak["n_folds"] == 5 and 0 <= leak["accuracy"] <= 1
    assert leak["accuracy_std"] >= 0 and leak["n_repeats"] == 5 and leak["repeat_std"] >= 0
    cc = r["class_check"]
    assert 0 <= cc["real_accuracy"] <= 1 and 0 <= cc["transferred_as_target_class"] <= 1
    assert "content_from_class" in r["leakage"]
    tr = r["transfer"]
    assert tr["n_pairs"] == 64 and tr["baseline_l1"] > 0 and tr["l1_ratio_to_baseline"] > 0
    assert json.loads((m / "eval" / "syn.json").read_text())["transfer"]["n_pairs"] == 64
    cy = r["cycle"]
    assert cy["n_pairs"] == 64 and all(cy[k]["baseline_distance"] > 0 and cy[k]["ratio_to_baseline"] >= 0
                                       for k in ("class", "content"))
    co = r["collapse"]
    assert co["content_ratio"] >= 0 and co["class_ratio"] >= 0 and isinstance(co["collapsed"], bool)
    assert set(co["training"]) == {"latent", "amortized"}
    assert cv2.imread(r["grid_png"]) is not None

    res = cli("evaluate", "-mn", "m", "-dn", "syn", "--device", "cpu", "--pairs", "32")
    assert res.exit_code == 0, res.output
    assert "leakage" in res.stdout + res.stderr and "copy baseline" in res.stdout + res.stderr
    assert "cycle: class code distance" in res.stdout and "collapse during latent training" in res.stdout
    from conftest import one_line_error

    assert "model not found" in one_line_error(cli("evaluate", "-mn", "none", "-dn", "syn"))
    assert "1 to 100 repeats" in one_line_error(cli("evaluate", "-mn", "m", "-dn", "syn", "--cv-repeats", "0"))
    res = cli("evaluate", "-mn", "m", "-dn", "syn", "--device", "cpu", "--pairs", "16", "--cv-repeats", "2", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["leakage"]["class_from_content"]["n_repeats"] == 2
