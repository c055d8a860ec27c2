"""pytest hooks of the benchmark suites (bench/README.md): a narrow pytest-benchmark table by default,
the summary of bench/report.py printed after it, and the run saved as JSON in bench/results/."""

from __future__ import annotations

import os
import platform
import re
import shlex
import time
from pathlib import Path

import pytest
from pytest_benchmark.utils import safe_dumps

from sns_engine.memory import keep_freed_memory

from .report import summarize, table

RESULTS = Path(__file__).parent / "results"
# pytest-benchmark's display options, set here unless given: narrow tables in ms, one per test
# function (not one per group of the summary), sorted by the mean they show
DISPLAY = {"columns": ["mean", "stddev", "rounds"], "time_unit": "ms", "sort": "mean", "name": "short",
           "group_by": "fullfunc"}
JSON_PATH = pytest.StashKey["Path | None"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-long", action="store_true",
                     help="also run the benchmarks marked `long` (large CPU batches: minutes each)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the `long` benchmarks unless --bench-long is given, so the default run stays short."""
    if config.getoption("bench_long"):
        return
    skip = pytest.mark.skip(reason="long benchmark: pass --bench-long to run it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    """Narrow pytest-benchmark's table; choose the default JSON's path (none if SNS_BENCH_JSON=0 or
    the user passed --benchmark-json). Every case runs with the freed memory kept, as the CPU
    engine runs (sns_engine.memory): the baselines too, whichever case comes first."""
    keep_freed_memory()
    config.addinivalue_line("markers", "long: a benchmark that takes minutes on the CPU; runs only "
                                       "with --bench-long")
    given = {word.split("=")[0] for word in (*config.invocation_params.args, *config.getini("addopts"),
                                              *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")))}
    for key, value in DISPLAY.items():
        if f"--benchmark-{key.replace('_', '-')}" not in given:
            setattr(config.option, f"benchmark_{key}", value)
    save = os.environ.get("SNS_BENCH_JSON", "1") != "0" and not config.getoption("benchmark_json", None)
    host = re.sub(r"[^\w.-]", "_", platform.node()) or "host"
    name = f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{host}-{os.getpid()}.json"
    config.stash[JSON_PATH] = RESULTS / name if save else None


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    """Add the summary rows to every JSON of the run (ours, --benchmark-json, --benchmark-save)."""
    output_json["summary"] = summarize(output_json["benchmarks"])


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the default JSON atomically: pytest-benchmark's --benchmark-json content and the summary."""
    config = session.config
    bs = getattr(config, "_benchmarksession", None)
    path = config.stash[JSON_PATH]
    if path is None or bs is None or not any(not b.has_error for b in bs.benchmarks):
        config.stash[JSON_PATH] = None
        return
    commit_info = config.hook.pytest_benchmark_generate_commit_info(config=config)
    config.hook.pytest_benchmark_update_commit_info(config=config, commit_info=commit_info)
    data = config.hook.pytest_benchmark_generate_json(
        config=config, benchmarks=bs.benchmarks, include_data=True, machine_info=bs.get_machine_info(),
        commit_info=commit_info)
    config.hook.pytest_benchmark_update_json(config=config, benchmarks=bs.benchmarks, output_json=data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(safe_dumps(data, ensure_ascii=True, indent=4) + "\n")
    tmp.replace(path)


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """Print the summary table and where the JSON went."""
    bs = getattr(config, "_benchmarksession", None)
    records = [b.as_dict(include_data=False) for b in bs.benchmarks if not b.has_error] if bs else []
    if not records:
        return
    terminalreporter.write_sep("=", "benchmark summary")
    for line in table(summarize(records)):
        terminalreporter.write_line(line)
    path = config.stash[JSON_PATH]
    if path is not None:
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        terminalreporter.write_line(f"JSON: {shown}  (SNS_BENCH_JSON=0: none)")
