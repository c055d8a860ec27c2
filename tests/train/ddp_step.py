"""One training step of the refiner; run plainly or under torchrun (tests/train/test_train.py)."""

import sys

from sns_engine.config import TrainConfig
from sns_engine.train.loop import train

if __name__ == "__main__":
    cfg = TrainConfig(model="refiner", steps=1, batch_size=8, lag=10, lr=1e-3, ema_decay=0.0)
    train(cfg, sys.argv[1], sys.argv[2], quiet=True)
