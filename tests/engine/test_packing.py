"""Packing under the refinement policies (issue 22 item 4). What the scheduler guarantees, read off
the engine's stats step by step: a refined step runs the emulator, the levels-only estimate and one
forward per tick, as many ticks as the longest walk, tick k on the members with more than k moves
padded to a bucket; so a level floor, which makes walks alike, keeps the ticks full, and a stride
leaves the skipped steps to the emulator alone."""

from sns_engine.config import RolloutConfig
from sns_engine.engine.rollout import Engine
from sns_engine.engine.scheduler import schedule_ticks

from .test_engine import SCHEDULE, initial, models

BATCH = 24


def _steps(cfg: RolloutConfig) -> list[dict]:
    """Per physical step: its moves (B,) and the stats' increments over it."""
    emulator, denoiser = models(cfg.path)
    engine = Engine(emulator, denoiser, SCHEDULE, initial(BATCH, seed=5), cfg, graphs=False)
    s, out = engine.stats, []
    for _ in range(cfg.steps):
        before = (s.forwards, s.member_forwards, s.useful_member_forwards, s.level_passes,
                  len(s.refine_forwards))
        _, moves = engine.step()
        after = (s.forwards, s.member_forwards, s.useful_member_forwards, s.level_passes,
                 len(s.refine_forwards))
        keys = ("forwards", "member_forwards", "useful", "level_passes", "walks")
        step = {k: b - a for k, a, b in zip(keys, before, after, strict=True)}
        step.update(moves=moves, ticks=s.refine_forwards[-1] if step["walks"] else 0,
                    padded=schedule_ticks(moves, engine.buckets).total)
        out.append(step)
    return out


def _occupancy(steps: list[dict]) -> float:
    """The walks' mean tick batch over the ensemble's size (1: every tick runs every member)."""
    return sum(s["padded"] for s in steps) / (BATCH * sum(s["ticks"] for s in steps))


def test_refined_steps_run_one_forward_per_tick_on_the_members_still_walking():
    for policy in ({}, {"level_floor": 60, "level_floor_y": 20}):
        cfg = RolloutConfig(path="left_down", steps=2, threshold=0, **policy)
        for s in _steps(cfg):
            assert s["walks"] == 1 and s["level_passes"] == 1
            assert s["ticks"] == int(s["moves"].max())                    # the longest walk
            assert s["forwards"] == 1 + s["ticks"]                        # + the emulator
            assert s["useful"] == BATCH + int(s["moves"].sum())           # every move, once
            assert s["member_forwards"] == BATCH + s["padded"]            # ticks padded to buckets


def test_a_level_floor_keeps_the_ticks_full():
    """Floors above the toy heads' estimates (0–35) make every walk 80–95 moves long."""
    plain = _steps(RolloutConfig(path="left_down", steps=2, threshold=0))
    floored = _steps(RolloutConfig(path="left_down", steps=2, threshold=0, level_floor=60,
                                   level_floor_y=20))
    assert all(bool((s["moves"] >= 80).all()) for s in floored)
    assert _occupancy(floored) > 0.85 > _occupancy(plain)


def test_a_stride_leaves_the_skipped_steps_to_the_emulator():
    for t, s in enumerate(_steps(RolloutConfig(path="left_down", steps=7, threshold=0, every=3))):
        if t % 3:
            assert (s["forwards"], s["member_forwards"], s["level_passes"], s["walks"]) == (1, BATCH, 0, 0)
            assert int(s["moves"].abs().sum()) == 0
        else:
            assert s["walks"] == 1 and s["forwards"] == 1 + s["ticks"] > 1
