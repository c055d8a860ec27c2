"""torch threads: one choice (sns_engine.threads) for the CLI and every API function, the caller's
setting restored after each call."""

import pytest
import torch

import sns_engine
from sns_engine import threads
from sns_engine.config import ConfigError


@pytest.mark.parametrize("cores,ranks,expected", [(1, None, 1), (2, None, 1), (2, "2", 1),
                                                  (8, None, 8), (8, "4", 2), (8, "16", 1)])
def test_default_threads(monkeypatch, cores, ranks, expected):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    if ranks is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    assert threads.default_threads() == expected


@pytest.fixture
def caller_threads():
    """The caller runs 3 torch threads; restored to the test process's own setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


def test_torch_threads_sets_and_restores(caller_threads):
    with threads.torch_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == caller_threads
    with pytest.raises(RuntimeError), threads.torch_threads(1):
        raise RuntimeError("the call failed")
    assert torch.get_num_threads() == caller_threads
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=f"threads must be a positive int or None.*got {bad}"):
            sns_engine.rollout(threads=bad)
    with pytest.raises(TypeError, match="threads must be an int, got str"):
        sns_engine.rollout(threads="2")


def _recording(seen: list, result=None):
    def fake(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return result
    return fake


def test_every_api_function_runs_under_the_choice(monkeypatch, tmp_path, caller_threads):
    from sns_engine import calibration, generation
    from sns_engine.diagnostics import evaluate
    from sns_engine.engine import rollout as engine_module
    from sns_engine.train import loop

    monkeypatch.setattr(threads, "default_threads", lambda: 1)
    seen: list[int] = []
    monkeypatch.setattr(loop, "train", _recording(seen, tmp_path))
    monkeypatch.setattr(generation, "generate", _recording(seen))
    monkeypatch.setattr(evaluate, "evaluate", _recording(seen, {}))
    monkeypatch.setattr(calibration, "calibrate", _recording(seen, {}))
    step = engine_module.Engine.step

    def recording_step(self):
        seen.append(torch.get_num_threads())
        return step(self)

    monkeypatch.setattr(engine_module.Engine, "step", recording_step)
    sns_engine.train("emulator", tmp_path / "d.zarr", tmp_path / "b")
    sns_engine.generate_data("kolmogorov", tmp_path / "d.zarr", 1, 2)
    sns_engine.evaluate(tmp_path / "e.zarr", tmp_path / "d.zarr")
    sns_engine.calibrate(None, tmp_path / "d.zarr", save=False, walk_bias=False)
    sns_engine.rollout(batch=1, steps=1, path="emulator", quiet=True)
    sns_engine.rollout(batch=1, steps=1, path="emulator", quiet=True, threads=2)
    assert seen == [1, 1, 1, 1, 1, 2]
    assert torch.get_num_threads() == caller_threads


def test_cli_threads_option():
    from sns_engine import cli

    args = cli.build_parser().parse_args(["rollout", "--out", "e.zarr", "--threads", "1"])
    assert args.threads == 1
    assert cli.build_parser().parse_args(["rollout", "--out", "e.zarr"]).threads is None
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["rollout", "--out", "e.zarr", "--threads", "0"])
