"""One training step of the refiner in float64; run plainly or under torchrun (tests/train/test_train.py).

float64 throughout (weights, frames, noise): what the test checks is the data-parallel arithmetic
(each rank's slice of the global batch, the gradient all-reduce and its averaging), which does not
depend on the dtype, while float32 rounding differences between the two summation orders would be
amplified by Adam's first step (see the test). The gradients the optimizer sees (after the
all-reduce, before clipping) are saved to OUT/grads-r{RANK}.safetensors.
"""

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from sns_engine.config import TrainConfig
from sns_engine.train import loop

if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)  # the models' weights and the noise draws
    sample = loop.sample_batch
    loop.sample_batch = lambda *args: sample(*args).double()  # the stores' float32 frames
    out = Path(sys.argv[2])
    clip = torch.nn.utils.clip_grad_norm_

    def record_then_clip(parameters, *args, **kwargs):
        parameters = list(parameters)
        out.mkdir(parents=True, exist_ok=True)
        save_file({f"{i}": p.grad.detach().clone() for i, p in enumerate(parameters)},
                  str(out / f"grads-r{os.environ.get('RANK', 0)}.safetensors"))
        return clip(parameters, *args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = record_then_clip
    cfg = TrainConfig(model="refiner", steps=1, batch_size=8, lag=10, lr=1e-3, ema_decay=0.0)
    loop.train(cfg, sys.argv[1], out, quiet=True)
