"""A rollout worker that fails part-way, for tests of `rollout(processes=N)`: the spawned workers
import it by name, as they import sns_engine.engine.job (a test module's own functions may not be)."""

from sns_engine.engine import job
from sns_engine.engine.rollout import Engine

FAIL_AT = 2  # worker 1 raises when it would take this physical step (0-based)


def failing_part(task, rank: int, world: int):
    """`job.worker_part`, except that worker 1 raises a RuntimeError before step FAIL_AT."""
    if rank == 1:
        step = Engine.step

        def failing(self):
            if self.next_step == FAIL_AT:
                raise RuntimeError(f"injected failure before step {FAIL_AT}")
            return step(self)

        Engine.step = failing
    return job.worker_part(task, rank, world)
