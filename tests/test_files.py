"""Atomic writes: the target holds its old content or the whole new content, and no temporary
file outlives the write."""

import pytest

from sns_engine.files import atomic_write


def test_success_replaces_the_target_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".config.json.")
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible before the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_failure_keeps_the_old_content_and_removes_the_temporary_file(tmp_path):
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


def test_concurrent_writes_of_one_target_use_distinct_temporary_files(tmp_path):
    target = tmp_path / "a.png"
    with atomic_write(target) as first, atomic_write(target) as second:
        assert first != second
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the last rename wins (the outer block ends last)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_get_the_permissions_of_a_new_file(tmp_path, mask):
    """safetensors creates its files 0600; an atomic write leaves 0666 less the umask, like a
    file written plainly (a trained bundle is readable by the group and others under umask 022)."""
    import os

    import torch
    from safetensors.torch import save_file

    old = os.umask(mask)
    try:
        with atomic_write(tmp_path / "w.safetensors") as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp))
        (tmp_path / "plain.txt").write_text("plain")
    finally:
        os.umask(old)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_an_interrupt_inside_interrupts_deferred_is_raised_when_the_block_ends():
    import os
    import signal

    from sns_engine.files import interrupts_deferred

    finished = []
    # a suite started in the background inherits SIGINT ignored: Python's own handler for the test
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                finished.append("the block ran to its end")
        assert finished == ["the block ran to its end"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
        with interrupts_deferred():  # no interrupt: nothing raised
            pass
    finally:
        signal.signal(signal.SIGINT, outer)
