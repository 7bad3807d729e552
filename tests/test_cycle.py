"""The cycle score: exact for a model whose transfer is exact, near the unrelated-image baseline for one
whose generator ignores its inputs."""

import numpy as np
import torch
from torch import nn

from lordkit.evaluation import cycle_score

N, SIZE = 40, 8


class StripeModel(nn.Module):
    """Content = the red channel's row means, class = the green channel's; the generator writes them
    back as stripes. Transfer is exact, so a cycle returns exactly the codes it started from."""

    def __init__(self, ignore_inputs: bool = False):
        super().__init__()
        self.ignore_inputs = ignore_inputs
        self.content_encoder = lambda x: x[:, 0].mean(dim=2)  # (B, H)
        self.class_encoder = lambda x: x[:, 1].mean(dim=2)  # (B, H)

    def convert(self, content_img, class_img):
        content, cls = self.content_encoder(content_img), self.class_encoder(class_img)
        img = torch.stack([content, cls, torch.zeros_like(content)], 1)[..., None].expand(-1, -1, -1, SIZE)
        if self.ignore_inputs:
            img = torch.full_like(img.contiguous(), 0.5)
        return img.contiguous(), content, cls


def striped_set(seed=0):
    rng = np.random.default_rng(seed)
    class_ids = rng.integers(0, 4, N)
    class_rows = rng.integers(0, 256, (4, SIZE))
    imgs = np.zeros((N, SIZE, SIZE, 3), np.uint8)
    imgs[..., 0] = rng.integers(0, 256, (N, SIZE))[:, :, None]  # content: random per image
    imgs[..., 1] = class_rows[class_ids][:, :, None]  # class: one pattern per class
    return Data(imgs, class_ids)


class Data:
    def __init__(self, imgs, class_ids):
        self.images, self.class_ids = imgs, class_ids

    def __len__(self):
        return len(self.images)


def test_exact_transfer_scores_zero_and_a_blind_generator_scores_near_the_baseline():
    ds = striped_set()
    good = cycle_score(StripeModel(), ds, torch.device("cpu"), n_pairs=64)
    assert good["n_pairs"] == 64
    for key in ("class", "content"):
        assert good[key]["distance"] < 1e-5 and good[key]["baseline_distance"] > 0.1
        assert good[key]["ratio_to_baseline"] < 1e-4
    blind = cycle_score(StripeModel(ignore_inputs=True), ds, torch.device("cpu"), n_pairs=64)
    for key in ("class", "content"):
        assert blind[key]["ratio_to_baseline"] > 0.5, blind


def test_one_class_gives_no_pairs():
    ds = striped_set()
    assert cycle_score(StripeModel(), Data(ds.images, np.zeros(N, np.int64)), torch.device("cpu")) is None
