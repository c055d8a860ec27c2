"""Names, groups and work of the benchmarks, and the summary of a run computed from them.

Each benchmark calls `describe` before timing: a readable name `op[case, …]`, the group of cases
measured side by side (one of them its baseline) and the work one timed call does, under the keys
of RATES. A group may also hold a second baseline (the authors' loop calling our network) and a
limit (the same work's network passes alone). `summarize` turns pytest-benchmark's records (the
entries of its JSON's "benchmarks") into rows: mean, rates (and the percent of the machine's GEMM
rate, where a benchmark recorded `percent_of_gemm`), the ratio to the group's baseline and to its
second baseline, and the row's time over the limit's; `table` lays them out for the terminal.
bench/conftest.py prints the table after a run and saves the rows with the JSON.
"""

from __future__ import annotations

import re
from collections import Counter

WIDTH = 110
# work key in extra_info → its rate's format ({v} the number, {p} its SI prefix); ratios use the
# first key, in this order, that a row shares with its baseline
RATES = {"member_steps": "{v}{p} member-steps/s", "flops": "{v} {p}FLOP/s",
         "elements": "{v}{p} elements/s", "bytes": "{v} {p}B/s"}
PREFIXES = ("", "k", "M", "G", "T", "P")
HEADER = ("benchmark", "mean ms", "±%", "throughput", "vs baseline")


def describe(benchmark, name: str, group: str | None = None, baseline: bool = False,
             second_baseline: bool = False, limit: bool = False, **work: float) -> None:
    """Name the benchmark, put it in `group` (as its baseline, second baseline or limit) and record
    the work of one timed call (keys of RATES). Call before timing: pytest-benchmark copies name and
    group then."""
    unknown = set(work) - set(RATES)
    if unknown:
        raise ValueError(f"unknown work {sorted(unknown)}; known: {list(RATES)}")
    benchmark.name, benchmark.group = name, group
    benchmark.extra_info.update(work, baseline=baseline)
    for role, given in (("second_baseline", second_baseline), ("limit", limit)):
        if given:
            benchmark.extra_info[role] = True


def summarize(benchmarks: list[dict]) -> list[dict]:
    """Rows of the summary, grouped in order of first appearance, each group's baseline first:
    name, group, mean and stddev in ms, rounds, rates per second of the work in extra_info, and the
    ratio of the row's rate to the baseline's (of their mean times if they share no work); in a group
    with a second baseline, the ratio to it too (`ratio2`, `vs2`); in a group with a limit, the row's
    time over the limit's for the same work (`over_limit`, named `limit_name`: 1.08 = 8 % above)."""
    groups: dict[str | None, list[dict]] = {}
    for bench in benchmarks:
        stats, info = bench["stats"], bench["extra_info"]
        groups.setdefault(bench["group"], []).append({
            "name": bench["name"], "group": bench["group"], "baseline": bool(info.get("baseline")),
            "second_baseline": bool(info.get("second_baseline")), "limit": bool(info.get("limit")),
            "mean_ms": stats["mean"] * 1e3, "stddev_ms": stats["stddev"] * 1e3,
            "rounds": stats["rounds"], "percent_of_gemm": info.get("percent_of_gemm"),
            "rates": {f"{key}_per_s": info[key] / stats["mean"] for key in RATES if key in info}})
    rows = []
    for group, members in groups.items():
        members.sort(key=lambda row: not row["baseline"])
        base = members[0] if group is not None and members[0]["baseline"] else None
        second, limit = (next((row for row in members if row[role]), None) if group is not None else None
                         for role in ("second_baseline", "limit"))
        for row in members:
            row["ratio"], row["vs"] = _ratio(row, base) if base and row is not base else (None, None)
            row["ratio2"], row["vs2"] = (_ratio(row, second) if second and row is not second
                                         else (None, None))
            row["over_limit"], row["limit_name"] = (_ratio(limit, row)[0], _first_missing(limit, row)
                                                    ) if limit and row is not limit else (None, None)
        rows += members
    return rows


def _ratio(row: dict, base: dict) -> tuple[float, str]:
    """(row's speed / baseline's, the baseline's name parts the row lacks: what it is compared to)."""
    shared = [key for key in row["rates"] if key in base["rates"]]
    ratio = (row["rates"][shared[0]] / base["rates"][shared[0]] if shared
             else base["mean_ms"] / row["mean_ms"])
    return ratio, _first_missing(base, row)


def _first_missing(base: dict, row: dict) -> str:
    """The first part of `base`'s name that `row`'s lacks (its op or implementation): short and
    telling."""
    own = set(_parts(row["name"]))
    return next((p for p in _parts(base["name"]) if p not in own), base["name"])


def _parts(name: str) -> list[str]:
    """`op[a, b]` → [op, a, b]."""
    return [p for p in re.split(r"\s*[\[\],]\s*", name) if p]


def table(rows: list[dict], width: int = WIDTH) -> list[str]:
    """The rows as lines of at most `width` characters: a header, then the rows with a blank line
    around each group of several (names shortened with … if they do not fit); a row's comparisons
    with its group's second baseline and limit on a line of their own, under its ratio."""
    sizes = Counter(row["group"] for row in rows)
    compared = [row["group"] is not None and sizes[row["group"]] > 1 for row in rows]
    cells = [_cells(row, c) for row, c in zip(rows, compared, strict=True)]
    head = (*HEADER, "")
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(1, 4)]
    room = width - sum(w + 2 for w in widths) - 2 - max(len(c[i]) for c in [head, *cells] for i in (4, 5))
    name_w = max(len(HEADER[0]), min(room, max(len(c[0]) for c in cells)))

    def line(c: tuple[str, ...]) -> str:
        name, mean, spread, rates, ratio = c[:5]
        return (f"{_fit(name, name_w):<{name_w}}  {mean:>{widths[0]}}  {spread:>{widths[1]}}"
                f"  {rates:<{widths[2]}}  {ratio}").rstrip()

    lines = [line(head)]
    for i, c in enumerate(cells):
        if i and rows[i]["group"] != rows[i - 1]["group"] and (compared[i] or compared[i - 1]):
            lines.append("")
        lines.append(line(c))
        if c[5]:
            lines.append(line(("", "", "", "", c[5])))
    return lines


def _cells(row: dict, compared: bool) -> tuple[str, str, str, str, str, str]:
    """(name, mean ms, stddev %, rates, ratio, the other comparisons) of a row; `compared`: it is in
    a group of several."""
    pct = 100 * row["stddev_ms"] / row["mean_ms"]
    spread = "" if row["rounds"] < 2 else f"{pct:.1f}" if pct < 10 else f"{pct:.0f}"
    rates = ", ".join(_si(value, RATES[key.removesuffix("_per_s")]) for key, value in row["rates"].items())
    if row.get("percent_of_gemm") is not None:
        rates += f" ({row['percent_of_gemm']:.0f}% of GEMM)"
    if row["ratio"] is not None:
        ratio = f"{row['ratio']:.2f}× vs {row['vs']}"
    else:
        ratio = "baseline" if row["baseline"] and compared else ""
    more = [f"{row['ratio2']:.2f}× vs {row['vs2']}" if row.get("ratio2") is not None else "",
            f"time {row['over_limit']:.2f}× {row['limit_name']}" if row.get("over_limit") is not None else ""]
    return row["name"], _ms(row["mean_ms"]), spread, rates, ratio, ", ".join(m for m in more if m)


def _ms(ms: float) -> str:
    """Four significant digits, without an exponent."""
    return f"{ms:.4g}" if ms < 1e4 else f"{ms:.0f}"


def _si(value: float, template: str) -> str:
    """`value` with an SI prefix and three significant digits, formatted by `template`."""
    power = 0
    while abs(value) >= 999.5 and power < len(PREFIXES) - 1:
        value, power = value / 1000, power + 1
    return template.format(v=f"{value:.3g}", p=PREFIXES[power])


def _fit(text: str, width: int) -> str:
    """`text` in `width` characters: if longer, its middle elided with … so that both the op and
    the last parts (the batch) stay readable."""
    if len(text) <= width:
        return text
    tail = min(len(text) // 2, (width - 1) // 2)
    return text[:width - 1 - tail] + "…" + text[len(text) - tail:]
