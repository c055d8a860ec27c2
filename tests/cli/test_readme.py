"""The README's command-line sequence parses as written, and its sizes fit each other (the run
itself, about 4 minutes, is recorded in the README)."""

import re
import shlex
from pathlib import Path

from sns_engine import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[list[str]]:
    block = README.read_text().split("Command line (", 1)[1].split("\n\n    sns-engine study", 1)[0]
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("    sns-engine ")]


def test_readme_sequence_parses_and_fits_its_data():
    commands = readme_commands()
    assert [c[0] for c in commands] == ["data", "train", "train", "rollout", "evaluate", "plot"]
    parsed = [cli.build_parser().parse_args(c) for c in commands]
    data, emulator, refiner = parsed[:3]
    assert (emulator.model, refiner.model) == ("emulator", "refiner")
    assert refiner.lag + 2 <= data.snapshots and emulator.unroll + 1 <= data.snapshots
    assert emulator.num_levels == refiner.num_levels  # one schedule per bundle
    assert re.search(r"Every stage once, as written, in \d+ minutes", README.read_text())
