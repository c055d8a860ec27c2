"""The benchmark run's summary (bench/report.py): rates from the recorded work, ratios within a group
against its baseline, a table of at most 110 columns."""

import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

_spec = importlib.util.spec_from_file_location("bench_report",
                                               Path(__file__).parents[1] / "bench" / "report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def _record(name, group, mean, stddev=0.0, rounds=5, **info):
    """A pytest-benchmark JSON record, as far as the summary reads it."""
    return {"name": name, "group": group, "extra_info": info,
            "stats": {"mean": mean, "stddev": stddev, "rounds": rounds}}


RECORDS = [
    _record("engine[left_down, cpu, batch=64]", "left_down, cpu, batch=64", 0.05, 0.001, member_steps=64),
    _record("paper_loop[left_down, cpu, batch=64]", "left_down, cpu, batch=64", 0.2, 0.004,
            member_steps=64, baseline=True),
    _record("engine[left_down, gpu, graphs, bf16, batch=1024]", "left_down, gpu, batch=1024", 0.01,
            member_steps=5 * 1024),
    _record("paper_loop[left_down, gpu, batch=1024]", "left_down, gpu, batch=1024", 0.004,
            member_steps=1024, baseline=True),
    _record("conv_block[torch, gpu, l0_dec, bf16, batch=64]", "conv_block, gpu, l0_dec, bf16, batch=64",
            2e-3, flops=4e11, bytes=8e9, baseline=True),
    _record("conv_block[triton, gpu, l0_dec, bf16, batch=64]", "conv_block, gpu, l0_dec, bf16, batch=64",
            1e-3, flops=4e11, bytes=2e9),
    _record("level_argmax[torch, cpu, fp32, batch=1]", "level_argmax, cpu, fp32, batch=1", 1e-4, rounds=1,
            flops=2e6, bytes=4e6, baseline=True),
    _record("untimed_work[a]", "g", 0.5, baseline=True),
    _record("untimed_work[b]", "g", 0.25),
    _record("oracle[x]", None, 3.0, member_steps=1),
]


def test_rows_rates_and_ratios():
    rows = {row["name"]: row for row in report.summarize(RECORDS)}
    engine = rows["engine[left_down, cpu, batch=64]"]
    assert engine["mean_ms"] == pytest.approx(50.0) and engine["stddev_ms"] == pytest.approx(1.0)
    assert engine["rates"] == {"member_steps_per_s": pytest.approx(1280.0)}
    assert engine["ratio"] == pytest.approx(4.0) and engine["vs"] == "paper_loop"
    # five steps per call against one: the ratio is of member-steps/s, not of time
    gpu = rows["engine[left_down, gpu, graphs, bf16, batch=1024]"]
    assert gpu["ratio"] == pytest.approx(2.0) and gpu["vs"] == "paper_loop"
    # both rates per row; the ratio from the shared FLOPs (the bytes moved differ)
    triton = rows["conv_block[triton, gpu, l0_dec, bf16, batch=64]"]
    assert set(triton["rates"]) == {"flops_per_s", "bytes_per_s"}
    assert triton["ratio"] == pytest.approx(2.0) and triton["vs"] == "torch"
    # no work recorded: the ratio of times
    assert rows["untimed_work[b]"]["ratio"] == pytest.approx(2.0) and rows["untimed_work[b]"]["vs"] == "a"
    for name in ("paper_loop[left_down, cpu, batch=64]", "level_argmax[torch, cpu, fp32, batch=1]",
                 "oracle[x]"):
        assert rows[name]["ratio"] is None and rows[name]["vs"] is None


def test_rows_keep_groups_together_baseline_first():
    names = [row["name"] for row in report.summarize(RECORDS)]
    assert names[:4] == ["paper_loop[left_down, cpu, batch=64]", "engine[left_down, cpu, batch=64]",
                         "paper_loop[left_down, gpu, batch=1024]",
                         "engine[left_down, gpu, graphs, bf16, batch=1024]"]


def test_table_is_narrow_and_readable():
    lines = report.table(report.summarize(RECORDS))
    assert max(map(len, lines)) <= report.WIDTH
    cells = {c[0]: c[1:] for c in (re.split(r"\s{2,}", line) for line in lines if line)}
    assert cells["benchmark"] == ["mean ms", "±%", "throughput", "vs baseline"]
    assert cells["paper_loop[left_down, cpu, batch=64]"] == ["200", "2.0", "320 member-steps/s", "baseline"]
    assert cells["engine[left_down, cpu, batch=64]"] == ["50", "2.0", "1.28k member-steps/s",
                                                         "4.00× vs paper_loop"]
    assert cells["conv_block[triton, gpu, l0_dec, bf16, batch=64]"] == ["1", "0.0", "400 TFLOP/s, 2 TB/s",
                                                                         "2.00× vs torch"]
    # alone in its group, one round: no spread, no ratio, not called a baseline
    assert cells["level_argmax[torch, cpu, fp32, batch=1]"] == ["0.1", "20 GFLOP/s, 40 GB/s"]
    # a blank line around each group of several rows, none between single rows
    assert lines.count("") == 5


def test_table_fits_the_longest_names_of_the_suite():
    """The suite's longest names, widest rates and ratios: 110 columns, no name shortened."""
    worst = [_record("conv_block[torch_cl, gpu, l1_dec, bf16, batch=64]", "c", 1.234e-4, 5e-5, flops=1.5e9,
                     bytes=1.5e8, baseline=True),
             _record("conv_block[triton, gpu, l1_dec, bf16, batch=64]", "c", 1.5e-4, flops=1.5e9, bytes=1e8),
             _record("engine[left_down, gpu, graphs, bf16, batch=1024]", "e", 0.25, member_steps=5 * 1024),
             _record("paper_loop[left_down, gpu, batch=1024]", "e", 1.0, 0.3, member_steps=1024,
                     baseline=True)]
    lines = report.table(report.summarize(worst))
    assert max(map(len, lines)) <= report.WIDTH and "…" not in "".join(lines)
    assert "12.2 TFLOP/s, 1.22 TB/s" in lines[1] and "20.5k member-steps/s  " in lines[5]
    assert lines[5].endswith("20.00× vs paper_loop")


def test_table_shortens_names_to_fit():
    long = _record("engine[" + ", ".join(["variant"] * 20) + "]", "g2", 1.0, member_steps=1)
    lines = report.table(report.summarize([long, _record("base[x]", "g2", 2.0, member_steps=1,
                                                         baseline=True)]))
    assert max(map(len, lines)) == report.WIDTH and "…" in lines[-1]
    name = lines[-1].split("  ")[0]
    assert name.startswith("engine[variant") and name.endswith("variant]")  # op and last part


def test_describe_sets_name_group_and_work():
    bench = SimpleNamespace(name="test_x[1]", group=None, extra_info={"other": 1})
    report.describe(bench, "op[a, batch=1]", group="a, batch=1", baseline=True, member_steps=3)
    assert (bench.name, bench.group) == ("op[a, batch=1]", "a, batch=1")
    assert bench.extra_info == {"other": 1, "member_steps": 3, "baseline": True}
    with pytest.raises(ValueError, match="unknown work"):
        report.describe(bench, "op", member_steps_per_s=3.0)


def test_percent_of_gemm_is_kept_and_shown():
    records = [_record("unet[emulator, reference, batch=64]", "unet, emulator", 0.5, flops=2e10,
                       baseline=True, percent_of_gemm=37.4),
               _record("unet[emulator, fast, batch=64]", "unet, emulator", 0.25, flops=2e10,
                       percent_of_gemm=74.8),
               _record("gemm[2048]", "gemm", 0.2, flops=1.7e10)]
    rows = {row["name"]: row for row in report.summarize(records)}
    assert rows["unet[emulator, fast, batch=64]"]["percent_of_gemm"] == 74.8
    assert rows["gemm[2048]"]["percent_of_gemm"] is None
    lines = report.table(report.summarize(records))
    fast = next(line for line in lines if "fast" in line)
    assert "(75% of GEMM)" in fast and "2.00× vs reference" in fast
    assert "of GEMM" not in next(line for line in lines if line.startswith("gemm"))


def test_second_baseline_and_limit():
    """The engine against the authors' loop, the same loop calling our network, and the step's
    network passes alone: speed ratios to both baselines, time over the limit's, each on its line."""
    group = "left_down, kolmogorov, cpu, batch=16"
    records = [_record("authors_loop[left_down, kolmogorov, cpu, batch=16]", group, 2.0, member_steps=16,
                       baseline=True),
               _record("masked_loop[left_down, kolmogorov, cpu, batch=16]", group, 1.2, member_steps=16,
                       second_baseline=True),
               _record("engine[left_down, kolmogorov, cpu, batch=16]", group, 1.0, member_steps=16),
               _record("network[left_down, kolmogorov, cpu, batch=16]", group, 0.8, member_steps=16,
                       limit=True)]
    rows = {row["name"].split("[")[0]: row for row in report.summarize(records)}
    engine = rows["engine"]
    assert engine["ratio"] == pytest.approx(2.0) and engine["vs"] == "authors_loop"
    assert engine["ratio2"] == pytest.approx(1.2) and engine["vs2"] == "masked_loop"
    assert engine["over_limit"] == pytest.approx(1.25) and engine["limit_name"] == "network"
    assert rows["masked_loop"]["ratio2"] is None and rows["network"]["over_limit"] is None
    assert rows["authors_loop"]["over_limit"] == pytest.approx(2.5)
    lines = report.table(report.summarize(records))
    assert max(map(len, lines)) <= report.WIDTH
    at = next(i for i, line in enumerate(lines) if line.startswith("engine["))
    assert lines[at].endswith("2.00× vs authors_loop")
    assert lines[at + 1].strip() == "1.20× vs masked_loop, time 1.25× network"
    assert lines[at + 1].index("1.20×") == lines[at].index("2.00×")
