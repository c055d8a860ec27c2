"""The authors' networks, re-typed for the import tests from reading QiLiu6/SNS at b247017.

CT/Models/Unet.py: `Residual_block` (separate_activation), `Attention_block` (a GroupNorm it never
applies, softmax over the query index), Down/Middle/Up blocks, `Upsample` / `Downsample`,
`Regressor_block`, `ModernUnet` and `ModernUnetDoubleRegressor_plus` (the base builds
down/middle/up with the level embeddings, the subclass rebuilds them: the encoder and middle
without). Emulator/Models/unet_modern.py: its `ModernUnet` (forces two blocks per level and no
attention) and `ModernUnetRegressor` (the Thermalizer; bottleneck side image_size/(2(L−1))).
CT/Models/SNS_NS.py: the wrapper's cosine schedule buffers and `model`. Attribute names are
theirs, so `state_dict()` has their tensor names. Nothing here is used by sns_engine.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Residual_block(nn.Module):  # noqa: N801 (their names)
    def __init__(self, c_in, c_out, first=None, second=None, third=None):
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = nn.Conv2d(c_in, c_out, (3, 3), padding=(1, 1), padding_mode="circular")
        self.conv2 = nn.Conv2d(c_out, c_out, (3, 3), padding=(1, 1), padding_mode="circular")
        self.shortcut = (nn.Conv2d(c_in, c_out, (1, 1), padding_mode="circular")
                         if c_in != c_out else nn.Identity())
        self.norm1, self.norm2 = nn.Identity(), nn.Identity()       # norm=False
        self.dims = (first, second, third)
        for name, dim in zip(("first", "second", "third"), self.dims, strict=True):
            if dim is not None:
                setattr(self, f"{name}_dense1", nn.Linear(dim, c_out))
                setattr(self, f"{name}_dense2", nn.Linear(dim, c_out))

    def forward(self, x, first=None, second=None, third=None):
        embs = list(zip(("first", "second", "third"), self.dims, (first, second, third), strict=True))
        h = self.conv1(self.act(self.norm1(x)))
        for name, dim, e in embs:          # separate_activation=True: GELU after each addition
            if dim is not None:
                h = h + getattr(self, f"{name}_dense1")(e)[:, :, None, None]
                h = self.act(h)
        h = self.conv2(self.act(self.norm2(h)))
        for name, dim, e in embs:
            if dim is not None:
                h = h + getattr(self, f"{name}_dense2")(e)[:, :, None, None]
                h = self.act(h)
        return h + self.shortcut(x)


class Attention_block(nn.Module):  # noqa: N801
    def __init__(self, channels, heads=1, d_k=None, groups=1):
        super().__init__()
        d_k = channels if d_k is None else d_k
        self.norm = nn.GroupNorm(groups, channels)                  # never applied
        self.projection = nn.Linear(channels, heads * d_k * 3)
        self.output = nn.Linear(heads * d_k, channels)
        self.scale, self.n_heads, self.d_k = d_k ** -0.5, heads, d_k

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.view(b, c, -1).permute(0, 2, 1)
        qkv = self.projection(x).view(b, -1, self.n_heads, 3 * self.d_k)
        q, k, v = torch.chunk(qkv, 3, dim=-1)
        attn = (torch.einsum("bihd,bjhd->bijh", q, k) * self.scale).softmax(dim=1)
        res = torch.einsum("bijh,bjhd->bihd", attn, v).reshape(b, -1, self.n_heads * self.d_k)
        res = self.output(res) + x
        return res.permute(0, 2, 1).reshape(b, c, h, w)


class Down_block(nn.Module):  # noqa: N801
    def __init__(self, c_in, c_out, attn, *embs):
        super().__init__()
        self.res = Residual_block(c_in, c_out, *embs)
        self.attn = Attention_block(c_out) if attn else nn.Identity()

    def forward(self, x, first=None, second=None, third=None):
        return self.attn(self.res(x, first, second, third))


class Up_block(Down_block):  # noqa: N801
    def __init__(self, c_in, c_out, attn, *embs):
        super().__init__(c_in + c_out, c_out, attn, *embs)   # reads cat(x, skip)


class Middle_block(nn.Module):  # noqa: N801
    def __init__(self, channels, attn, *embs):
        super().__init__()
        self.res1 = Residual_block(channels, channels, *embs)
        self.attn = Attention_block(channels) if attn else nn.Identity()
        self.res2 = Residual_block(channels, channels, *embs)

    def forward(self, x, first=None, second=None, third=None):
        return self.res2(self.attn(self.res1(x, first, second, third)), first, second, third)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, (4, 4), (2, 2), (1, 1))

    def forward(self, x, *_):
        return self.conv(x)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, (3, 3), (2, 2), (1, 1), padding_mode="circular")

    def forward(self, x, *_):
        return self.conv(x)


class Regressor_block(nn.Module):  # noqa: N801
    def __init__(self, channels, width, height, out_dim=1, mlp_max=4096):
        super().__init__()
        filters = round(mlp_max / (width * height))
        self.act = nn.GELU()
        self.conv1 = nn.Conv2d(channels, channels, (3, 3), padding=(1, 1), padding_mode="circular")
        self.conv2 = nn.Conv2d(channels, filters, (1, 1), padding_mode="circular")
        self.linear1 = nn.Linear(width * height * filters, out_dim)
        self.linear2 = nn.Linear(out_dim, out_dim)

    def forward(self, x):
        x = self.conv2(self.act(self.conv1(self.act(x))))
        return self.linear2(self.act(self.linear1(x.reshape(x.shape[0], -1))))


def _encoder_decoder(cfg, enc_embs, dec_embs):
    """Their down list, middle and up list for `cfg` (blocks, attention and embeddings as given)."""
    blocks, mults, is_attn = cfg["n_blocks"], cfg["dim_mults"], cfg["is_attn"]
    down, c_in = [], cfg["hidden_channels"]
    for i, m in enumerate(mults):
        c_out = c_in * m
        for _ in range(blocks):
            down.append(Down_block(c_in, c_out, is_attn[i], *enc_embs))
            c_in = c_out
        if i < len(mults) - 1:
            down.append(Downsample(c_in))
    middle = Middle_block(c_in, cfg["mid_attn"], *enc_embs)
    up = []
    for i in reversed(range(len(mults))):
        for _ in range(blocks):
            up.append(Up_block(c_in, c_in, is_attn[i], *dec_embs))
        c_out = c_in // mults[i]
        up.append(Up_block(c_in, c_out, is_attn[i], *dec_embs))
        c_in = c_out
        if i > 0:
            up.append(Upsample(c_in))
    return nn.ModuleList(down), middle, nn.ModuleList(up)


class ModernUnet(nn.Module):
    """CT/Models/Unet.py's base (emulator config: no embeddings)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.act = cfg, nn.GELU()
        hidden = cfg["hidden_channels"]
        self.image_proj = nn.Conv2d(cfg["input_channels"], hidden, (3, 3), padding=(1, 1),
                                    padding_mode="circular")
        embs = (cfg.get("first_embedding_dim"), cfg.get("second_embedding_dim"), None)
        for name, dim in zip(("first", "second"), embs[:2], strict=True):
            if dim is not None:
                setattr(self, f"{name}_mlp1", nn.Linear(dim, dim))
                setattr(self, f"{name}_mlp2", nn.Linear(dim, dim))
        self.down, self.middle, self.up = _encoder_decoder(cfg, embs, embs)
        self.norm = nn.Identity()
        self.final = nn.Conv2d(hidden, cfg["output_channels"], (3, 3), padding=(1, 1),
                               padding_mode="circular")

    def encode(self, x):
        x = self.image_proj(x)
        skips = [x]
        for m in self.down:
            x = m(x)
            skips.append(x)
        return self.middle(x), skips

    def decode(self, x, skips, first=None, second=None):
        for m in self.up:
            if not isinstance(m, Upsample):
                x = torch.cat((x, skips.pop()), dim=1)
            x = m(x, first, second, None)
        return self.final(self.act(self.norm(x)))

    def forward(self, x):
        return self.decode(*self.encode(x))


class ModernUnetDoubleRegressor_plus(ModernUnet):  # noqa: N801
    def __init__(self, cfg):
        super().__init__(cfg)
        n_down = len(cfg["dim_mults"]) - 1
        mid = cfg["image_width"] // 2 ** n_down
        channels = cfg["hidden_channels"] * math.prod(cfg["dim_mults"])
        classes = cfg["regression_output_dim"]
        self.regressor_block_1 = Regressor_block(channels, mid, mid, out_dim=classes)
        self.regressor_block_2 = Regressor_block(channels, mid, mid, out_dim=classes)
        embs = (cfg["first_embedding_dim"], cfg["second_embedding_dim"], None)
        self.down, self.middle, self.up = _encoder_decoder(cfg, (None, None, None), embs)

    def forward(self, x):
        x, skips = self.encode(x)
        logits_short, logits_t = self.regressor_block_1(x), self.regressor_block_2(x)
        emb_short = self.act(self.first_mlp2(self.act(self.first_mlp1(logits_short.softmax(1)))))
        emb_t = self.act(self.second_mlp2(self.act(self.second_mlp1(logits_t.softmax(1)))))
        return self.decode(x, skips, emb_short, emb_t), logits_short, logits_t

    @torch.no_grad()
    def ratio_class_both(self, x):
        mid = self.encode(x)[0]
        c1 = self.regressor_block_1(mid).softmax(1).argmax(1)
        c2 = self.regressor_block_2(mid).softmax(1).argmax(1)
        return torch.stack([c1, c2], dim=1)


class EmulatorModernUnet(ModernUnet):
    """Emulator/Models/unet_modern.py's `ModernUnet`: two blocks per level, no attention."""

    def __init__(self, cfg):
        super().__init__({**cfg, "n_blocks": 2, "mid_attn": False,
                          "is_attn": (False,) * 4, "first_embedding_dim": None,
                          "second_embedding_dim": None})


class ModernUnetRegressor(EmulatorModernUnet):
    """The Thermalizer network (Emulator/Models/unet_modern.py)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        mid = int(cfg["image_size"] / (2 * (len(cfg["dim_mults"]) - 1)))
        channels = cfg["hidden_channels"] * math.prod(cfg["dim_mults"])
        self.regressor_block = Regressor_block(channels, mid, mid, out_dim=cfg["timesteps"])

    def forward(self, x, regression_output=False):
        x, skips = self.encode(x)
        level = self.regressor_block(x)
        out = self.decode(x, skips)
        return (out, level) if regression_output else out

    @torch.no_grad()
    def noise_class(self, x):
        return self.regressor_block(self.encode(x)[0]).softmax(1).argmax(1)


def cosine_buffers(timesteps, epsilon=0.008):
    """SNS_NS's registered schedule buffers (float32, 0-based)."""
    steps = torch.linspace(0, timesteps, steps=timesteps + 1, dtype=torch.float32)
    f = torch.cos(((steps / timesteps + epsilon) / (1.0 + epsilon)) * torch.pi * 0.5) ** 2
    betas = torch.clip(1.0 - f[1:] / f[:timesteps], 0.0, 0.999)
    alphas = 1.0 - betas
    cum = torch.cumprod(alphas, dim=-1)
    return {"betas": betas, "alphas": alphas, "alphas_cumprod": cum,
            "sqrt_alphas_cumprod": cum.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - cum).sqrt()}


def sns_state_dict(model, timesteps):
    """The state dict of their `SNS_NS(config, model)` wrapper: buffers, then `model.`…"""
    return {**cosine_buffers(timesteps), **{f"model.{k}": v for k, v in model.state_dict().items()}}
