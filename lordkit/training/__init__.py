"""The two LORD training stages and the loop machinery they share.

    latent.py      stage 1, `train_latent`: content codes, class codes, modulation and generator
    amortized.py   stage 2, `train_amortized`: encoders to the stage-1 codes, generator fine-tuned
    loop.py        the step loop both share: schedule, logging and checkpoint cadence, stop on signals
    budget.py      --time-budget: time the first steps, fit the epochs and the schedule tied to them
    checkpoint.py  what a checkpoint holds, gathered into the single-process layout under torchrun
    metrics.py     append-only metrics.jsonl and TensorBoard
    session.py     rank, device, process group and lock; rank 0 decides, every rank stops on its error
    data.py        training images on the device and the order an epoch visits them in

What they read and write is a model dir (lordkit.modeldir owns its format).
"""

from lordkit.training.amortized import train_amortized
from lordkit.training.latent import train_latent
from lordkit.training.loop import NonFiniteLoss, TrainingInterrupted

__all__ = ["train_latent", "train_amortized", "TrainingInterrupted", "NonFiniteLoss"]
