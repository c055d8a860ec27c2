"""The authors' networks (QiLiu6/SNS at b247017) as ours: their checkpoints' tensors, mapped.

Their trainers `torch.save` {"state_dict", "config", …}: the state dict of their network (the
emulator's `ModernUnet`, the Thermalizer's `ModernUnetRegressor`) or of their SNS_NS / SNS_QG
wrapper (`ModernUnetDoubleRegressor_plus` under "model.", beside five schedule buffers). Files are
read with `torch.load(weights_only=True)`: no pickled code runs. Every tensor is mapped onto our
modules by the table below (docs/method.md §Checkpoints trained with the authors' code) or
checked; a tensor that maps nowhere, a module of ours left without one, or a shape that differs
refuses the checkpoint, naming them. Their networks are ours (models.unet, `attention="authors"`
where they have attention); their heads have N classes, no clean one (class c = our level c + 1),
so the models get `label_offset` 1 (models.labels). sns_engine.authors writes them into a bundle.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sns_engine.diffusion.schedule import cosine_tables
from sns_engine.models import build_model
from sns_engine.models.unet import UNetConfig

REPOSITORY, COMMIT = "QiLiu6/SNS", "b247017"
# our model kind → their network class and its number of level heads
CLASSES = {"emulator": ("ModernUnet", 0), "thermalizer": ("ModernUnetRegressor", 1),
           "refiner": ("ModernUnetDoubleRegressor_plus", 2)}

# The mapping table, their module → ours (inside the model's `unet`; weight and bias alike)
TOP = {"image_proj": "stem", "final": "out",
       "first_mlp1": "level_embeddings.0.fc1", "first_mlp2": "level_embeddings.0.fc2",
       "second_mlp1": "level_embeddings.1.fc1", "second_mlp2": "level_embeddings.1.fc2"}
HEADS = {"regressor_block": 0, "regressor_block_1": 0, "regressor_block_2": 1}  # 1: y, 2: x
HEAD_MODULES = {0: [], 1: ["regressor_block"], 2: ["regressor_block_1", "regressor_block_2"]}
HEAD = {"conv1": "conv1", "conv2": "conv2", "linear1": "fc1", "linear2": "fc2"}
MIDDLE = {"res1": ("middle.0", "res"), "attn": ("middle.0", "attn"), "res2": ("middle.1", "res")}
RESIDUAL = {"conv1": "conv1", "conv2": "conv2", "shortcut": "shortcut",
            "first_dense1": "shift1.0", "second_dense1": "shift1.1",     # after conv1
            "first_dense2": "shift2.0", "second_dense2": "shift2.1"}     # after conv2
ATTENTION = {"projection": "qkv", "output": "proj"}   # Linear → 1×1 conv: weight (o, i) → (o, i, 1, 1)
UNUSED = ("norm",)       # their Attention_block's GroupNorm: defined, never applied; dropped
# their diffusion wrapper's buffers (0-based tables) → our schedule's (level-indexed, [1:]); checked
SCHEDULE = {"betas": "betas", "alphas": "alphas", "alphas_cumprod": "alpha_bar",
            "sqrt_alphas_cumprod": "sqrt_alpha_bar",
            "sqrt_one_minus_alphas_cumprod": "sqrt_one_minus_alpha_bar"}
DROP = "dropped"


class AuthorsCheckpointError(ValueError):
    """A checkpoint that cannot be imported exactly: not readable without running pickled code, of
    another network, or with tensors that do not all map onto ours."""


class Imported(NamedTuple):
    """One checkpoint mapped onto our model (weights in the checkpoint's dtype, eval mode)."""

    model: torch.nn.Module
    unet: UNetConfig
    config: dict[str, Any]        # their training config stored in the file ({} if none)
    dropped: list[str]            # their tensors checked or unused by their forward, not copied


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, their config) of a file their trainers wrote, or of a bare state dict; read
    with weights_only=True, on the CPU."""
    try:
        with warnings.catch_warnings():   # "Detected pickle protocol 4": a plain pickle, refused below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # UnpicklingError, RuntimeError, …: anything that is not weights
        raise AuthorsCheckpointError(
            f"{path} cannot be read without executing pickled code (weights_only=True refused: "
            f"{str(err).splitlines()[0][:100]}); their ThermalizerTrainer writes plain pickles. "
            "Re-save its state dict where it was written: torch.save(torch.load(P, "
            "weights_only=False)['state_dict'], 'state.pt'), and import that") from err
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        state, config = data["state_dict"], data.get("config") or {}
    else:
        state, config = data, {}
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise AuthorsCheckpointError(f"{path} holds no state dict (name → tensor), nor a dict with "
                                     "one under 'state_dict'; pass the file their trainer saved")
    return dict(state), config if isinstance(config, dict) else {}


def _network(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the network's tensors, their names stripped of "module."/"model."; the wrapper's rest)."""
    if all(k.startswith("module.") for k in state):              # saved from inside DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    if not any(k.startswith("model.") for k in state):
        return state, {}
    return ({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")},
            {k: v for k, v in state.items() if not k.startswith("model.")})


def _units(keys: set[str], name: str) -> str:
    """Their `down` / `up` list as a string: "u" a block (res, attn), "|" a Down/Upsample."""
    kinds = ""
    while f"{name}.{len(kinds)}.res.conv1.weight" in keys or f"{name}.{len(kinds)}.conv.weight" in keys:
        kinds += "u" if f"{name}.{len(kinds)}.res.conv1.weight" in keys else "|"
    return kinds


def layout(state: dict[str, torch.Tensor], where: str) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Where each entry of their `down` / `up` lists sits in ours ("encoder.i.j", "down.i", …)
    and the backbone's hyper-parameters, read off the tensor names and shapes."""
    keys = set(state)
    down, up = _units(keys, "down"), _units(keys, "up")
    groups = down.split("|")
    blocks = len(groups[0])
    if "image_proj.weight" not in keys or not blocks or any(len(g) != blocks for g in groups):
        raise AuthorsCheckpointError(f"{where}: its tensors do not form a ModernUnet (image_proj, "
                                     f"down.k, middle, up.k, final); found down {down}")
    levels = len(groups)
    want = "|".join(["u" * (blocks + 1)] * levels)
    if up != want:
        raise AuthorsCheckpointError(f"{where}: its up list {up} does not mirror its down list "
                                     f"({levels} levels of {blocks} blocks: {want})")
    places: dict[str, list[str]] = {"down": [], "up": []}
    for i in range(levels):
        places["down"] += [f"encoder.{i}.{j}" for j in range(blocks)] + [f"down.{i}"] * (i < levels - 1)
    for d in range(levels):
        places["up"] += [f"decoder.{d}.{j}" for j in range(blocks + 1)] + [f"up.{d}"] * (d < levels - 1)
    first = [k * (blocks + 1) for k in range(levels)]             # each level's first down unit
    chans = [state[f"down.{k}.res.conv1.weight"].shape[0] for k in first]
    widths = [state["image_proj.weight"].shape[0], *chans]
    pairs = list(zip(widths[:-1], widths[1:], strict=True))
    if any(b % a for a, b in pairs):
        raise AuthorsCheckpointError(f"{where}: level widths {widths} are not integer multiples")
    attended = tuple(i for i, k in enumerate(first)
                     if any(f"down.{k + j}.attn.projection.weight" in keys for j in range(blocks)))
    mid = "middle.attn.projection.weight" in keys
    return places, {
        "in_channels": state["image_proj.weight"].shape[1], "out_channels": state["final.weight"].shape[0],
        "hidden": widths[0], "channel_mults": tuple(b // a for a, b in pairs),
        "blocks_per_level": blocks, "attention_levels": attended, "mid_attention": mid,
        "attention": "authors" if attended or mid else "standard"}


def our_name(theirs: str, places: dict[str, list[str]]) -> str | None:
    """Our state-dict name (inside `unet`) of their tensor `theirs`; DROP for one their forward
    never reads; None if it maps nowhere."""
    module, _, leaf = theirs.rpartition(".")
    parts = module.split(".")
    if module in TOP:
        return f"{TOP[module]}.{leaf}"
    if parts[0] in HEADS and len(parts) == 2 and parts[1] in HEAD:
        return f"level_heads.{HEADS[parts[0]]}.{HEAD[parts[1]]}.{leaf}"
    if parts[0] == "middle" and len(parts) >= 2 and parts[1] in MIDDLE:
        target, part = MIDDLE[parts[1]]
        return _unit(target, [part, *parts[2:]], leaf)
    if parts[0] in ("down", "up") and len(parts) >= 3 and parts[1].isdigit():
        k = int(parts[1])
        if k >= len(places[parts[0]]):
            return None
        target = places[parts[0]][k]
        if target.startswith(("down.", "up.")):       # Downsample / Upsample: one conv
            return f"{target}.{leaf}" if parts[2:] == ["conv"] else None
        return _unit(target, parts[2:], leaf)
    return None


def _unit(target: str, parts: list[str], leaf: str) -> str | None:
    """A Down/Up/Middle block's residual block ("res") or attention ("attn") tensor → ours."""
    if len(parts) != 2:
        return None
    if parts[0] == "res" and parts[1] in RESIDUAL:
        return f"{target}.block.{RESIDUAL[parts[1]]}.{leaf}"
    if parts[0] == "attn" and parts[1] in ATTENTION:
        return f"{target}.attention.{ATTENTION[parts[1]]}.{leaf}"
    if parts[0] == "attn" and parts[1] in UNUSED:
        return DROP
    return None


def _check_schedule(buffers: dict[str, torch.Tensor], classes: int, where: str) -> list[str]:
    """Their wrapper's buffers must be our cosine schedule over N = `classes` levels; names of
    the ones checked. Anything else there maps nowhere."""
    tables = cosine_tables(classes)
    unknown = sorted(set(buffers) - set(SCHEDULE))
    if unknown:
        raise AuthorsCheckpointError(f"{where}: tensors {unknown} map nowhere in our models "
                                     f"(beside the network under 'model.': {sorted(SCHEDULE)})")
    for name, tensor in buffers.items():
        ours = tables[SCHEDULE[name]][1:]
        # their tables are float32: at N = 1000 the betas are off ours by up to 3e-5
        if tensor.shape != ours.shape or not torch.allclose(tensor.double(), ours, rtol=1e-3, atol=1e-4):
            raise AuthorsCheckpointError(
                f"{where}: its schedule buffer {name} is not the cosine schedule over {classes} "
                "levels (s = 0.008, betas ≤ 0.999) that sns_engine runs; a linear schedule "
                "cannot be imported")
    return sorted(buffers)


def read_authors(path: str | Path, kind: str, grid: int) -> Imported:
    """Their checkpoint at `path` as our model `kind` ("emulator", "refiner", "thermalizer") for
    fields on a `grid`² grid (`map_state`)."""
    state, config = read_checkpoint(path)
    return map_state(state, kind, grid, config, f"{kind} checkpoint {path}")


def map_state(state: dict[str, torch.Tensor], kind: str, grid: int,
              config: dict[str, Any] | None = None, where: str = "checkpoint") -> Imported:
    """Their state dict as our model `kind` for fields on a `grid`² grid: every tensor mapped by
    the table (module docstring) or checked, weights in their dtype (the model is built on the
    meta device and takes their tensors), label_offset 1 where it has level heads."""
    if kind not in CLASSES:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(CLASSES)}")
    cls, heads = CLASSES[kind]
    config = config or {}
    net, rest = _network(state)
    found = sorted(h for h in HEADS if f"{h}.linear2.weight" in net)
    expected = HEAD_MODULES[heads]
    if found != expected or config.get("model_type", cls) != cls:
        named = config.get("model_type") or (f"a network with heads {found}" if found else "a ModernUnet")
        raise AuthorsCheckpointError(f"{where} holds {named}; a {kind} is their {cls}")
    places, backbone = layout(net, where)
    head = {}
    if heads:
        first = expected[0]
        classes = net[f"{first}.linear2.weight"].shape[0]
        hidden = net[f"{first}.linear1.weight"].shape[0]
        head = {"heads": heads, "head_classes": classes, "label_offset": 1,
                "head_channels": net[f"{first}.conv2.weight"].shape[0],
                "head_hidden": None if hidden == classes else hidden}
        if heads == 2:
            width = net["first_mlp1.weight"].shape[0] if "first_mlp1.weight" in net else classes
            head |= {"condition_decoder": True, "level_embedding": None if width == classes else width}
    dropped = _check_schedule(rest, head.get("head_classes", 1000), where) if rest else []
    try:
        unet = UNetConfig(grid=grid, **backbone, **head)
        with torch.device("meta"):
            model = build_model(kind, unet)
    except ValueError as err:
        raise AuthorsCheckpointError(f"{where}: its network does not fit a {kind} ({err})") from err
    ours = {k.removeprefix("unet."): v for k, v in model.state_dict().items()}
    mapped, source, unmapped = {}, {}, []
    for name, tensor in net.items():
        target = our_name(name, places)
        if target == DROP:
            dropped.append(name)
        elif target is None or target not in ours:
            unmapped.append(name)
        else:
            source[target] = name
            mapped[target] = tensor.reshape(ours[target].shape) if (
                ".attention." in target and tensor.numel() == ours[target].numel()) else tensor
    missing = sorted(f"unet.{k}" for k in set(ours) - set(mapped))
    wrong = sorted(f"{source[k]} {list(v.shape)} → unet.{k} {list(ours[k].shape)}"
                   for k, v in mapped.items() if v.shape != ours[k].shape)
    if unmapped or missing or wrong:
        parts = [f"{len(unmapped)} of its tensors map nowhere: {_few(unmapped)}" if unmapped else "",
                 f"{len(missing)} of ours get none: {_few(missing)}" if missing else "",
                 f"{len(wrong)} shapes differ: {_few(wrong)}" if wrong else ""]
        raise AuthorsCheckpointError(f"{where} does not map onto our {kind} for {grid}² fields: "
                                     + "; ".join(p for p in parts if p)
                                     + " — is it their published network at another grid or with "
                                     "norm/time embeddings?")
    model.load_state_dict({f"unet.{k}": v for k, v in mapped.items()}, strict=True, assign=True)
    return Imported(model.eval().requires_grad_(False), unet, config, dropped)


def _few(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", … ({len(names) - n} more)" if len(names) > n else "")
