"""Member split over local worker processes: `rollout(processes=N)` on the CPU.

N spawned worker processes each roll out a contiguous, chunk-aligned share of the members
(`Shard.local`) on one torch thread with no thread split of their own, exactly as N torchrun ranks
would: a member's trajectory depends only on its id (its noise is keyed by it), so each share is
rolled out bit for bit as it would be alone. Against one process of the whole batch it is the
same bit for bit where the U-Net's CPU fast path is batch-invariant (its linears are, by
ops.row_linear; oneDNN's convs were on every AVX-512 CPU measured): a walk batches a member's
network calls with whichever members walk with it. Where the convs are not, a refined path's
states may differ in the last bits, and a near-tied head reading can then flip. Unlike
engine/parallel.py's threads, processes share no GIL.

The parent does what torchrun's rank 0 does before the others start (it creates or checks the
ensemble store, so no barrier is needed), starts the workers with the 'spawn' method (JAX may be
loaded in the parent, and fork is unsafe under its threads; a script that calls this must do so
under `if __name__ == "__main__":`), then collects each worker's RolloutResult and concatenates
them in member order (`gathered`). Worker 0 shows the progress bar.

A worker that raises ends the call with a WorkerError naming it and its members. With a store the
other workers finish first, so everything they wrote stays and a `resume=True` rerun continues
the failed share from its last checkpoint; in memory they are stopped at once (their results
would be dropped anyway). A parent interrupted (Ctrl-C) stops every worker before it re-raises.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
import torch

from sns_engine.config import ConfigError, check_type
from sns_engine.engine.rollout import EngineStats, MemberFlops, RolloutResult
from sns_engine.engine.shard import Shard

Target = Callable[[int, int], RolloutResult]  # (rank, world) → that worker's share
EXIT_WAIT = 30.0  # seconds a worker that sent its share may take to exit before it is terminated


class WorkerError(RuntimeError):
    """A worker process of `rollout(processes=N)` failed; `worker_traceback` is its traceback."""

    def __init__(self, message: str, worker_traceback: str = ""):
        super().__init__(message)
        self.worker_traceback = worker_traceback
        if worker_traceback:
            self.add_note(f"the worker's traceback:\n{worker_traceback}")


def check(processes: Any, batch: int, engine: str, threads: int | None) -> None:
    """Refuse, before any work, a `processes` that is no positive int, that the batch does not
    split over in chunks (as torchrun's ranks), or that another split excludes: torchrun's ranks,
    the reference engine, or threads > 1 (each worker computes on one thread)."""
    check_type("processes", processes, int)
    if processes < 1:
        raise ConfigError(f"processes must be a positive int, got {processes}")
    if processes == 1:
        return
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        raise ConfigError(f"processes={processes} under torchrun (WORLD_SIZE={world}): its ranks "
                          "already split the members; drop processes= or run without torchrun")
    if engine == "reference":
        raise ConfigError("engine='reference' runs in one process; drop processes=")
    if threads not in (None, 1):
        raise ConfigError(f"processes={processes} runs one thread per process; drop threads={threads} "
                          "or pass processes=1 to split over threads")
    Shard.local(batch, 0, processes)  # the batch splits in chunks


def run(target: Target, world: int, members: Sequence[int], keep_going: bool) -> list[RolloutResult]:
    """[target(rank, world) for rank in range(world)], each in its own spawned worker process on
    one torch thread; `target` must pickle (a module-level function, or a partial of one, with
    picklable arguments). `members` (every member's id) names a failed worker's share. With
    `keep_going` the other workers finish when one fails, else they are stopped; then a
    WorkerError names the failed worker (the lowest rank if several did)."""
    ctx = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    pending: dict[Connection, int] = {}
    parts: dict[int, RolloutResult] = {}
    failed: dict[int, tuple[str, str]] = {}
    try:
        for rank in range(world):
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_work, args=(target, rank, world, send), daemon=True,
                               name=f"sns-rollout-{rank}")
            proc.start()
            send.close()  # the worker holds the only write end: its exit reads as EOF here
            procs.append(proc)
            pending[receive] = rank
        while pending and (keep_going or not failed):
            for conn in wait(list(pending)):
                rank = pending.pop(conn)
                outcome, payload, details = _received(conn, procs[rank])
                if outcome == "done":
                    parts[rank] = _unpacked(payload)
                else:
                    failed[rank] = (payload, details)
    finally:  # a worker that reported exits on its own (terminated mid-exit, it would leak its
        # semaphores); one left running (stopped after a failure, or Ctrl-C here) is terminated
        unreported = set(pending.values())
        for rank, proc in enumerate(procs):
            if rank not in unreported:
                proc.join(timeout=EXIT_WAIT)
            if proc.is_alive():
                proc.terminate()
            proc.join()
    if failed:
        rank = min(failed)
        message, details = failed[rank]
        share = members[Shard.local(len(members), rank, world).rows]
        others = sorted(set(failed) - {rank})
        raise WorkerError(f"rollout worker {rank} of {world} (members {share[0]}..{share[-1]}) "
                          f"failed: {message}" + (f"; workers {others} failed too" if others else ""),
                          details)
    return [parts[rank] for rank in range(world)]


def gathered(parts: Sequence[RolloutResult], per_member: Callable[[], MemberFlops]) -> RolloutResult:
    """One RolloutResult of the workers' `parts` (in rank order, so member order): their per-member
    tensors concatenated. The stats count every worker's network calls (forwards and member
    counts summed; refine_forwards summed step by step, the lists aligned at the last step, as
    resumed workers may start at different steps); physical_steps is the most any worker ran
    (all run the same steps unless resumed); `per_member` counts the FLOPs of the networks."""
    def cat(name: str) -> torch.Tensor | None:
        values = [getattr(part, name) for part in parts]
        return None if values[0] is None else torch.cat(values)

    stats = [part.stats for part in parts]
    longest = max(len(s.refine_forwards) for s in stats)
    refine = np.zeros(longest, dtype=np.int64)
    for s in stats:
        refine[longest - len(s.refine_forwards):] += np.asarray(s.refine_forwards, dtype=np.int64)
    counts = {f.name: sum(getattr(s, f.name) for s in stats) for f in dataclasses.fields(EngineStats)
              if isinstance(getattr(stats[0], f.name), int) and f.name != "physical_steps"}
    merged = EngineStats(physical_steps=max(s.physical_steps for s in stats), **counts,
                         refine_forwards=refine.tolist(), per_member=per_member)
    return RolloutResult(cat("states"), parts[0].store, cat("flags"), cat("flagged_at"),
                         cat("levels"), cat("moves"), merged)


def _received(conn: Connection, proc: multiprocessing.process.BaseProcess) -> tuple[str, Any, str]:
    """The worker's (outcome, payload, traceback), or a failure if it ended without sending one."""
    try:
        with conn:
            return conn.recv()
    except EOFError:
        proc.join()
        return ("failed", f"it ended with exit code {proc.exitcode} before returning its share "
                          "(killed? out of memory?)", "")


def _work(target: Target, rank: int, world: int, conn: Connection) -> None:
    """A worker process: its share on one torch thread, sent back as ("done", result, "") or
    ("failed", message, traceback)."""
    torch.set_num_threads(1)
    try:
        conn.send(("done", _packed(target(rank, world)), ""))
    except BaseException as err:  # Ctrl-C too: the parent reports what stopped it
        conn.send(("failed", f"{type(err).__name__}: {err}", traceback.format_exc()))
    finally:
        conn.close()


def _packed(result: RolloutResult) -> dict[str, Any]:
    """`result` as picklable values copied through the pipe: numpy arrays (torch would share the
    tensors' memory through a handle that dies with the worker) and the stats without their FLOP
    counter (a closure; the parent's counts them)."""
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    fields = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in fields.items()}
    return {**fields, "stats": dataclasses.replace(result.stats, per_member=MemberFlops)}


def _unpacked(fields: dict[str, Any]) -> RolloutResult:
    return RolloutResult(**{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                            for k, v in fields.items()})
