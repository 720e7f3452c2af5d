"""docs/benchmarks.md and docs/benchmarks.png from one run's results (bench/results/<date>.json).

    python bench/report.py bench/results/2026-11-27.json     # re-render without re-measuring
    python bench/report.py MAIN.json EXTRA.json...           # EXTRA's benchmarks in place of MAIN's

A later file's benchmarks (a ``bench/run.py --only ...`` run) replace the same benchmarks of the files
before it; the page names the run each such section comes from, so no figure is edited in by hand.

Ratios against same-run baselines come first, then each benchmark's absolute figures, the goals with
the reason for each miss and the change that would close it, the method, and the machine.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import goals
import machine
from goals import SCALE_OUT_GOAL, best, best_batch, best_latencies
from harness import ROOT
from report_format import rate_text as _rate
from report_format import table as _table
from report_format import when_text
from report_partitions import partitions_sections
from results_model import Goal, Results, Supplement
from worker_throughput import CONSUMERS, DIAGNOSTIC, Sample

GROWTH_IMAGE = "benchmarks-operator.png"

LABELS = {
    "streampipe": "streampipe worker",
    "bare_loop": "bare redis-py loop",
    "faststream_batch": "FastStream batch",
    "faststream_single": "FastStream single",
    "tutorial_loop": "tutorial loop (COUNT 10)",
    "streampipe_json": "streampipe worker, JSON handler",
    "bare_loop_json": "bare redis-py loop, JSON handler",
    "bare_async_loop": "diagnostic: bare loop on redis.asyncio",
    "streampipe_async": "diagnostic: worker, async no-op handler",
    "streampipe_thread": "diagnostic: worker, sync handler kept on the thread",
    "streampipe_gc_default": "diagnostic: worker, CPython's default collector",
}
COLORS = {
    "streampipe": "#1f77b4",
    "bare_loop": "#7f7f7f",
    "faststream_batch": "#ff7f0e",
    "faststream_single": "#d62728",
    "tutorial_loop": "#2ca02c",
    "streampipe_json": "#17becf",
    "bare_loop_json": "#8c564b",
    "bare_async_loop": "#bcbd22",
    "streampipe_async": "#17becf",
    "streampipe_thread": "#8c564b",
    "streampipe_gc_default": "#9467bd",
}


def cost_model(samples: Sequence[Sample], consumer: str) -> tuple[float, float] | None:
    """(CPU µs per read, CPU µs per entry) from the fastest samples at batch 1 and batch 100.

    CPU per entry at batch b is close to ``per_entry + per_read / b``; two batch sizes pin both down.
    """
    cost: dict[int, float] = {}
    for batch in (1, 100):
        mine = [s for s in samples if s.consumer == consumer and s.batch == batch and s.processes == 1]
        if not mine:
            return None
        cost[batch] = max(mine, key=lambda s: s.rate).consumer_cpu_us
    per_read = (cost[1] - cost[100]) / (1 - 1 / 100)
    return per_read, cost[100] - per_read / 100


def _load_line(results: Results) -> str:
    loads = results.load
    start, end = loads[0], loads[-1]
    waited = (
        f" (after waiting {results.waited_for_quiet_s:.0f} s for it to drop)"
        if results.waited_for_quiet_s
        else ""
    )
    line = (
        f"1-minute load average {start.load1:.2f} at the start{waited} and {end.load1:.2f} at the end (the "
        "load average counts this run's own processes too)"
    )
    others = machine.other_work(loads)
    if others:
        busiest = max(others, key=lambda step: step[1])
        first, last = loads[0], loads[-1]
        spent = max((last.busy_s - first.busy_s) - (last.ours_s - first.ours_s), 0.0)
        total = max(last.at - first.at, 1e-9)
        line += (
            f"; other work on the machine used {spent / total:.2f} cores on average during the run, "
            f"{busiest[1]:.2f} during {busiest[0]} (the most)"
        )
    return line


def _machine_line(results: Results) -> str:
    m = results.machine
    servers = ", ".join(m.servers.values())
    vm = " (virtual machine)" if m.virtualized else ""
    return f"{m.cores} cores, {m.cpu_model}{vm}, {m.memory_gib:.0f} GiB; {servers}; Python {m.python}"


# --- sections ---------------------------------------------------------------------------------------


def ratio_section(results: Results) -> list[str]:
    rows = []
    for r in results.ratios:
        factor = f"{r.ratio:.2f}x" if r.ratio < 10 else f"{r.ratio:.0f}x"
        if r.unit == "entries/s" and "ceiling" in r.name:
            factor = f"{r.ratio:.0%}"
        better = "lower is better" if r.lower_is_better else ""
        ours = _rate(r.ours) if r.unit == "entries/s" else f"{r.ours:.2f} {r.unit}"
        theirs = _rate(r.baseline) if r.unit == "entries/s" else f"{r.baseline:.2f} {r.unit}"
        rows.append([r.name, ours, theirs, f"**{factor}**", better])
    return [
        "## Ratios against same-run baselines",
        "",
        "Each pair ran on the same server in interleaved rounds of the same run; the best round of each "
        "counts. Rates are entries per second.",
        "",
        *_table(["comparison", "streampipe", "baseline", "ratio", ""], rows, "lrrrl"),
    ]


def goal_rows(goal_list: Sequence[Goal]) -> list[list[str]]:
    rows = []
    for goal in goal_list:
        measured = "-" if goal.measured is None else f"{goal.measured:.3g} {goal.unit}"
        met = f"met ({goal.margin:.0%} to spare)" if goal.margin is not None else "met"
        verdict = {True: met, False: f"**missed**: {goal.shortfall}", None: "not measured"}[goal.met]
        rows.append([goal.name, goal.target, measured, verdict])
    return rows


def throughput_section(results: Results) -> list[str]:
    if results.throughput is None:
        return []
    samples = [s for s in results.throughput.samples if s.processes == 1]
    batches = sorted({s.batch for s in samples if s.consumer == "streampipe"})
    rows = []
    for consumer in CONSUMERS:
        mine = [s for s in samples if s.consumer == consumer]
        if not mine:
            continue
        cells = []
        for batch in batches:
            rate = best(mine, consumer, batch)
            cells.append(_rate(rate) if rate else "")
        if consumer == "tutorial_loop":
            cells = [""] * len(batches)
            position = batches.index(10) if 10 in batches else 0
            cells[position] = _rate(best(mine, consumer))
        rows.append([LABELS[consumer], *cells])
    cost_rows = []
    for consumer in CONSUMERS:
        batch = best_batch(samples, consumer)
        pick = [s for s in samples if s.consumer == consumer and s.batch == batch]
        if not pick:
            continue
        top = max(pick, key=lambda s: s.rate)
        server = f"{top.server_cpu_us:.2f}" if top.server_cpu_us is not None else "-"
        cost_rows.append(
            [
                LABELS[consumer],
                str(batch),
                _rate(top.rate),
                f"{top.consumer_cpu_us:.2f}",
                server,
                f"{top.consumer_rss_mb:.0f}",
            ]
        )
    cpu_rows = []
    for consumer in CONSUMERS:
        if consumer == "tutorial_loop" or not any(s.consumer == consumer for s in samples):
            continue
        cells = []
        for batch in batches:
            mine = [s for s in samples if s.consumer == consumer and s.batch == batch]
            cells.append(f"{max(mine, key=lambda s: s.rate).consumer_cpu_us:.2f}" if mine else "")
        model = cost_model(samples, consumer)
        cells += [f"{model[0]:.0f}", f"{model[1]:.2f}"] if model else ["", ""]
        cpu_rows.append([LABELS[consumer], *cells])
    rounds = len({(s.consumer, s.batch) for s in samples}) and max(
        sum(1 for x in samples if x.consumer == s.consumer and x.batch == s.batch) for s in samples
    )
    return [
        "## 1. Worker throughput: one process, no-op handler",
        "",
        f"Entries acked per second by one consumer process (best of {rounds} interleaved rounds, "
        f"{results.settings.window_s:g} s windows), by XREADGROUP batch size. All read the same "
        f"pre-filled stream of example events on {results.throughput.server}.",
        "",
        *_table(["consumer", *(f"batch {b}" for b in batches)], rows),
        "Cost per entry at each consumer's best batch size, over the same window (CPU time of the consumer "
        "process and of the server, in microseconds per entry; RSS of the consumer at the end of the "
        "window):",
        "",
        *_table(["consumer", "batch", "entries/s", "consumer CPU µs", "server CPU µs", "RSS MiB"], cost_rows),
        "Consumer CPU per entry (µs) by batch size, and the split into a fixed cost per read (XREADGROUP "
        "+ XACK round trip and everything done once per batch) and a cost per entry, fitted from batch 1 "
        "and batch 100. The diagnostic rows split the worker's cost: redis.asyncio's share (bare loop on "
        "redis.asyncio), the hand-off to the handler thread that a fast sync handler no longer pays (sync "
        "handler kept on the thread), and what the collector tuning is worth (CPython's default "
        "collector).",
        "",
        *_table(
            ["consumer", *(f"batch {b}" for b in batches), "µs per read", "µs per entry"],
            cpu_rows,
        ),
    ]


def scale_out_section(results: Results) -> list[str]:
    data = results.scale_out
    if data is None:
        return []
    top = max(c.rate for c in data.ceilings)
    ceiling = max(data.ceilings, key=lambda c: c.rate)
    busy = f", server {ceiling.server_busy:.0%} busy" if ceiling.server_busy is not None else ""
    rows = [
        [
            "server ceiling (pipelined, no client work)",
            _rate(top),
            "100%",
            "-",
            f"{ceiling.server_cpu_us:.2f}" if ceiling.server_cpu_us else "-",
        ]
    ]
    for count in sorted({s.processes for s in data.samples}):
        mine = [s for s in data.samples if s.processes == count]
        fastest = max(mine, key=lambda s: s.rate)
        rows.append(
            [
                f"{count} worker process{'es' if count > 1 else ''}",
                _rate(fastest.rate),
                f"{fastest.rate / top:.0%}",
                f"{fastest.consumer_cpu_us:.2f}",
                f"{fastest.server_cpu_us:.2f}" if fastest.server_cpu_us is not None else "-",
            ]
        )
    return [
        "## 2. Scale-out: worker processes vs the server's ceiling",
        "",
        f"Workers at batch {data.batch} in one group on {data.server}; the ceiling is the server answering "
        f"the same commands (XREADGROUP COUNT {data.batch} + one multi-id XACK per batch) streamed through "
        "one "
        f"pipelined connection with nothing done on the client{busy}. Best of the interleaved rounds.",
        "",
        *_table(["", "entries/s", "of ceiling", "workers' CPU µs/entry", "server CPU µs/entry"], rows),
    ]


def latency_section(results: Results) -> list[str]:
    if not results.latency:
        return []
    rows = []
    chosen = best_latencies(results.latency)
    rounds = len(results.latency) // max(len(chosen), 1)
    for lat in sorted(chosen, key=lambda x: (x.rate, x.consumer != "streampipe")):
        rows.append(
            [
                f"{lat.rate:,}/s",
                LABELS[lat.consumer],
                f"{lat.p50_ms:.2f}",
                f"{lat.p90_ms:.2f}",
                f"**{lat.p99_ms:.2f}**",
                f"{lat.p999_ms:.2f}",
                f"{lat.max_ms:.2f}",
                f"{lat.samples:,}",
                f"{lat.achieved_rate:,.0f}",
                f"{lat.producer_max_lag_ms:.1f}",
            ]
        )
    return [
        "## 3. End-to-end latency: XADD to handler done",
        "",
        f"Open-loop producer at a fixed offered rate for {results.settings.latency_seconds:g} s (the first "
        "second dropped as warm-up), latency from each entry's *scheduled* send time to its no-op handler "
        "(milliseconds). The worker runs with its defaults (batch 100, block 2 s). Of "
        f"{rounds} interleaved round{'s' if rounds > 1 else ''}, each row is the one with the lowest p99; "
        "every round is in the results file.",
        "",
        *_table(
            [
                "offered",
                "consumer",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "max",
                "samples",
                "sent/s",
                "producer lag max",
            ],
            rows,
            "llrrrrrrrr",
        ),
    ]


def producer_section(results: Results) -> list[str]:
    if not results.producer:
        return []
    p = results.producer

    def top(field: Callable[[Any], float]) -> str:
        return _rate(max(field(r) for r in p))

    rows = [
        ["`Producer.send_many` (1000 per round trip)", top(lambda r: r.send_many)],
        ["`send_many` validated by the handler's Router", top(lambda r: r.send_many_validated)],
        ["redis-benchmark XADD -c 1 -P 1000", top(lambda r: r.redis_benchmark_p1000)],
        ["`Producer.send` (one XADD per round trip)", top(lambda r: r.send)],
        ["redis-benchmark XADD -c 1 -P 1", top(lambda r: r.redis_benchmark_p1)],
    ]
    share = max(r.send_many for r in p) / max(r.redis_benchmark_p1000 for r in p)
    note = []
    if share < 0.5:
        note = [
            f"`send_many` reaches {share:.0%} of what the server takes from redis-benchmark at the same "
            "pipeline depth. It encodes every event first (nothing is sent if one is invalid), then packs "
            "each chunk's XADDs (a prefix packed once per type and version, then the payload's JSON) while "
            "the server works on the previous chunk; that second phase runs at the server's pace (about "
            "redis-benchmark's time per XADD, timed separately on 2026-12-04), so the server idles only "
            "while the client encodes: pydantic-core's JSON encoder, plus its validator and serializer "
            "when validated. *Next lever:* encoding on another core.",
            "",
        ]
    return [
        "## 4. Producer",
        "",
        f"The example event over one connection, best of {len(p)} interleaved rounds (entries/s).",
        "",
        *_table(["producer", "entries/s"], rows),
        *note,
    ]


def server_paths_section(results: Results) -> list[str]:
    costs = results.server_paths
    if not costs:
        return []
    server = results.machine.servers.get("redis8", "Redis 8.2")

    def rows(job: str) -> list[list[str]]:
        mine = [c for c in costs if c.job == job]
        base = mine[0].per_entry_us if mine and mine[0].entries else None
        out = []
        for cost in mine:
            ratio = f"{cost.per_entry_us / base:.1f}x" if base and cost.entries else "-"
            per = f"{cost.per_entry_us:.4f}" if cost.entries else "-"
            out.append([cost.path, f"{cost.entries:,}", str(cost.calls), per, ratio])
        return out

    header = ["path", "entries", "calls", "server µs/entry", "vs first row"]
    return [
        "## 7. Redis 8.2 stream commands against the paths without them",
        "",
        f"On {server}: server CPU time (`INFO commandstats`) per entry removed or acknowledged. Protected "
        "trims of a stream whose groups processed all but the newest tenth:",
        "",
        *_table(header, rows("trim")),
        "The planned trim stays the default for approximate retention: it removes whole nodes, and "
        "`MAXLEN ~ ACKED` removes nothing on this server. Exact retention (`approximate: false`) uses "
        "`XTRIM = ... ACKED` in 10K steps where the server has it, since the planned path can only "
        "trim length approximately. Acknowledging 100 ids per command, one group:",
        "",
        *_table(header, rows("ack")),
        "Deleting on ack costs the same through `XACKDEL` as through `XACK` + `XDEL`, several times the "
        "ack alone, while the planned trim removes processed entries later for a fraction of that: the "
        "worker acknowledges with `XACK` only.",
        "",
    ]


def operator_section(results: Results) -> list[str]:
    op = results.operator
    if op is None:
        why = results.skipped.get("operator")
        return [
            "## 5. Operator",
            "",
            f"Not measured in this run: {why}." if why else "Not measured in this run.",
            "",
        ]
    lines = ["## 5. Operator", ""]
    if op.reaction_s:
        lines += [
            f"Scaling reaction at `pollInterval: 1s` over {len(op.reaction_s)} trials: median "
            f"**{statistics.median(op.reaction_s):.2f} s**, worst **{max(op.reaction_s):.2f} s** "
            f"(all: {', '.join(f'{r:.2f}' for r in op.reaction_s)} s). Measured from the moment the write "
            "that "
            "pushed the backlog past the next replica's threshold was sent to the moment the Deployment's "
            "`spec.replicas` showed the new count (polled every 20 ms).",
            "",
        ]
    rows = []
    if op.all_ready_s is not None:
        rows.append([f"{op.pipelines} StreamPipelines applied (one kubectl apply)", f"{op.apply_s:.1f} s"])
        rows.append([f"... until all {op.pipelines} are Ready", f"**{op.all_ready_s:.1f} s**"])
        rows.append(["operator CPU while they became Ready", f"{op.ramp_cpu_percent:.0f} % of a core"])
    if op.idle_cpu_percent is not None:
        rows.append(
            [
                f"operator CPU, {op.pipelines} idle pipelines ({op.idle_window_s:.0f} s)",
                f"{op.idle_cpu_percent:.1f} % of a core",
            ]
        )
        rows.append([f"operator RSS, {op.pipelines} idle pipelines", f"{op.idle_rss_mb:.0f} MiB"])
    if op.control_plane_start_s is not None:
        rows.append(["(control plane start-up, not counted above)", f"{op.control_plane_start_s:.1f} s"])
    return [*lines, *_table(["", ""], rows), *growth_section(results)]


def growth_section(results: Results) -> list[str]:
    """How the operator's cost grows with the number of pipelines (a fresh operator per size)."""
    op = results.operator
    if op is None or not op.growth:
        return []
    window = op.growth[0].idle_window_s
    lines = [
        "",
        "### How the operator grows with the number of pipelines",
        "",
        "A fresh operator per size, watching a namespace of its own, one Valkey; the idle columns are "
        f"measured over {window:.0f} s with every pipeline Ready and nothing happening. Redis connections "
        "are those it holds (`INFO clients` against the count before it started); API requests come from "
        "the API server's own `apiserver_request_total` without Leases, which only the API server "
        "renews here (writes: POST/PUT/PATCH/DELETE; reads: GET/LIST; "
        "watches are long-lived and not counted again).",
        "",
        f"![operator growth]({GROWTH_IMAGE})",
        "",
    ]
    rows = [
        [
            f"{point.pipelines:,}",
            f"{point.all_ready_s:.1f} s",
            f"{point.ramp_cpu_percent:.0f} %",
            f"{point.idle_cpu_percent:.1f} %",
            f"{point.idle_rss_mb:.0f} MiB",
            f"{point.redis_connections:,}",
            f"{point.api_writes_per_min:,.0f}",
            f"{point.api_reads_per_min:,.0f}",
        ]
        for point in op.growth
    ]
    header = [
        "pipelines",
        "all Ready after",
        "CPU meanwhile",
        "idle CPU (one core = 100 %)",
        "idle RSS",
        "Redis connections",
        "API writes/min",
        "API reads/min",
    ]
    return [*lines, *_table(header, rows)]


def memory_section(results: Results) -> list[str]:
    mem = results.memory
    if mem is None:
        return []
    rows = [["worker, idle (joined its group, metrics server on)", f"{mem.worker_idle_rss_mb:.0f} MiB"]]
    if results.throughput:
        for batch in sorted({s.batch for s in results.throughput.samples if s.consumer == "streampipe"}):
            peak = max(
                s.consumer_rss_mb
                for s in results.throughput.samples
                if s.consumer == "streampipe" and s.batch == batch
            )
            rows.append([f"worker under full load, batch {batch}", f"{peak:.0f} MiB"])
    server_rows = [
        [m.server, f"{m.entries:,}", f"{m.bytes_per_entry:.0f}", f"**{m.mb_per_million:.0f} MiB**"]
        for m in mem.servers
    ]
    return [
        "## 6. Memory",
        "",
        *_table(["worker RSS", ""], rows),
        "Server memory for the example event (`order.created` v1 with an `OrderCreated` payload, written by "
        "`Producer.send_many` with auto ids), from `used_memory` before and after:",
        "",
        *_table(["server", "entries", "bytes/entry", "per million entries"], server_rows),
    ]


def _tail_lines(results: Results) -> list[str]:
    chosen = {(x.consumer, x.rate): x for x in best_latencies(results.latency)}
    lines = []
    for rate in sorted({x.rate for x in results.latency}):
        ours, default, bare = (
            chosen.get((c, rate)) for c in ("streampipe", "streampipe_gc_default", "bare_loop")
        )
        if ours and default and bare:
            lines.append(
                f"{rate:,}/s: p99.9 {ours.p999_ms:.1f} ms (default collector {default.p999_ms:.1f}, bare "
                f"loop {bare.p999_ms:.1f}), p99 {ours.p99_ms:.1f} ms (default collector "
                f"{default.p99_ms:.1f}, bare loop {bare.p99_ms:.1f})"
            )
    if not lines:
        return []
    return [
        "The latency tail against the same worker with CPython's default collector (unfrozen, a full "
        "collection now and then walks every object the worker imported while the loop waits; how often "
        "one lands in a 5-second window varies, so compare over several runs). Lowest-p99 rounds: "
        + "; ".join(lines)
        + "."
    ]


def worker_time_section(results: Results) -> list[str]:
    """The worker's cost split (diagnostic variants), its py-spy profile, and the proposed changes."""
    costs = [*_worker_costs(_single(results)), *_tail_lines(results)]
    profile = _profile_lines(results)
    if not costs and not profile:
        return []
    lines = ["## Where the worker's time goes", ""]
    for paragraph in costs:
        lines += [paragraph, ""]
    lines += profile
    return [*lines, f"**What is left.** {_parsing_share(results)}{WORKER_NEXT}", ""]


PARSING = (
    "streampipe_worker.read_channel:_Replies.data_received",
    "streampipe_worker.batch_reader:BatchReader._on_channel.<locals>.<listcomp>",
    "streampipe_worker.batch_reader:BatchReader._on_channel",
)


def _parsing_share(results: Results) -> str:
    prof = results.profile
    if prof is None:
        return ""
    share = sum(part for name, part in prof.self_time if name in PARSING)
    return (
        f"In this run's profile turning XREADGROUP replies into Python objects (hiredis, called from "
        f"`_Replies.data_received`, and a field dict per entry in `BatchReader._on_channel`) took "
        f"{share:.0%} of the samples. "
    )


def _profile_lines(results: Results) -> list[str]:
    prof = results.profile
    if prof is None:
        return []
    rows = [[f"`{name}`", f"{share:.0%}"] for name, share in prof.self_time[:10]]
    inclusive = [
        [f"`{name}`", f"{share:.0%}"] for name, share in prof.worker_inclusive if "__main__" not in name
    ][:8]
    return [
        f"py-spy sampled one worker at batch {prof.batch} ({prof.samples:,} samples, "
        f"{_rate(prof.rate_while_sampled)} entries/s while sampled). Self time by function:",
        "",
        *_table(["function", "share of samples"], rows),
        "Inclusive time of the worker's own functions:",
        "",
        *_table(["function", "share of samples"], inclusive),
    ]


# --- why a goal was missed, and what would close it ----------------------------------------------------


def _single(results: Results) -> list[Sample]:
    return [s for s in results.throughput.samples if s.processes == 1] if results.throughput else []


def _why_tutorial(results: Results) -> list[str]:
    samples = _single(results)
    tutorial, ours, bare = (best(samples, c) for c in ("tutorial_loop", "streampipe", "bare_loop"))
    if not (tutorial and ours and bare):
        return []
    batch = best_batch(samples, "streampipe")
    return [
        f"The tutorial loop ran at {_rate(tutorial)}/s here, so 40x is {_rate(40 * tutorial)}/s. The "
        f"worker's best was {_rate(ours)}/s (batch {batch}); the bare redis-py loop, which only reads and "
        f"acks, reached {_rate(bare)}/s, {bare / tutorial:.0f}x the tutorial. The goal asks the full worker "
        f"for {40 * tutorial / bare:.0%} of the bare loop's rate; it made {ours / bare:.0%}. Where the rest "
        "goes is under *Where the worker's time goes* below.",
    ]


def _why_faststream(results: Results) -> list[str]:
    samples = _single(results)
    theirs, ours = best(samples, "faststream_batch"), best(samples, "streampipe")
    if not (theirs and ours):
        return []
    return [
        f"FastStream's batch subscriber reached {_rate(theirs)}/s at its best batch size "
        f"({best_batch(samples, 'faststream_batch')}), the worker {_rate(ours)}/s. Where the worker's time "
        "goes is under *Where the worker's time goes* below.",
    ]


def _worker_costs(samples: Sequence[Sample]) -> list[str]:
    lines: list[str] = []
    names = ("bare_loop", "bare_async_loop", "streampipe", "streampipe_thread")
    models = [cost_model(samples, name) for name in names]
    if all(models):
        b, a, sp, th = (m for m in models if m is not None)
        asyncio_share, hand_off = max(a[0] - b[0], 0), max(th[0] - sp[0], 0)
        lines.append(
            "Where the worker's CPU goes (fitted from batch 1 and 100, section 1), per read + per entry: "
            f"the synchronous bare loop {b[0]:.0f} µs + {b[1]:.2f} µs; the same loop on redis.asyncio "
            f"{a[0]:.0f} + {a[1]:.2f}; the worker {sp[0]:.0f} + {sp[1]:.2f}. The worker does not read "
            "through redis.asyncio: its reader has a connection of its own whose replies go from the "
            "event loop straight into hiredis (docs/worker.md, *Delivery protocol*), so redis.asyncio's "
            f"{asyncio_share:.0f} µs per read over the synchronous loop are not in its cost; its fixed cost "
            f"per read ({sp[0]:.0f} µs: the event loop's wake-up, its tasks, metrics, in-flight and ack "
            f"lists) is {abs(sp[0] - b[0]):.0f} µs {'below' if sp[0] < b[0] else 'above'} the synchronous "
            "loop's, which pays redis-py's layers per command. Its sync handler kept on the handler thread "
            "costs "
            f"{th[0]:.0f} + {th[1]:.2f}: {hand_off:.0f} µs per read for the hand-off, which a fast handler "
            "no longer pays since it runs on the event loop (docs/worker.md, *Where sync handlers run*)."
        )
    default, ours = best(samples, "streampipe_gc_default", 1000), best(samples, "streampipe", 1000)
    if default and ours:
        cpu = {
            name: max((s for s in samples if s.consumer == name and s.batch == 1000), key=lambda s: s.rate)
            for name in ("streampipe", "streampipe_gc_default")
        }
        default_cpu, ours_cpu = (
            cpu["streampipe_gc_default"].consumer_cpu_us,
            cpu["streampipe"].consumer_cpu_us,
        )
        lines.append(
            "At batch 1000 the collector tuning (docs/worker.md, *Garbage collector*) is worth "
            f"{ours / default:.2f}x: with CPython's default collector the same worker moved "
            f"{_rate(default)}/s against {_rate(ours)}/s, at {default_cpu:.2f} µs of CPU per entry instead "
            f"of {ours_cpu:.2f}: with a 1000-entry batch alive, generation-0 collections at 700 walk "
            "thousands of young objects that die by reference counting anyway."
        )
    return lines


def _fastest(samples: Sequence[Sample], consumer: str, batch: int) -> Sample | None:
    mine = [s for s in samples if s.consumer == consumer and s.batch == batch and s.processes == 1]
    return max(mine, key=lambda s: s.rate) if mine else None


def _rounds_of(samples: Sequence[Sample], consumer: str, batch: int) -> str:
    rounds = [s for s in samples if s.consumer == consumer and s.batch == batch]
    return " / ".join(f"{_rate(s.rate)}/s ({s.consumer_cpu_us:.0f} µs CPU an entry)" for s in rounds)


def _why_json(results: Results) -> list[str]:
    """Every round of the worst batch size, so a verdict decided by one round shows as such."""
    samples = _single(results)
    ratios = {
        batch: best(samples, "streampipe_json", batch) / bare
        for batch in sorted({s.batch for s in samples if s.consumer == "streampipe_json"})
        if (bare := best(samples, "bare_loop_json", batch)) and best(samples, "streampipe_json", batch)
    }
    if not ratios:
        return []
    worst = min(ratios, key=lambda batch: ratios[batch])
    return [
        f"The worst batch size was {worst}. Its rounds, worker: "
        f"{_rounds_of(samples, 'streampipe_json', worst)}; bare loop: "
        f"{_rounds_of(samples, 'bare_loop_json', worst)}. At batch 1 and 10 the rate is set by "
        "the round trip (the socket write and the wake-ups of three processes on two cores), which moves "
        "by a third between rounds on this machine; compare the CPU per entry beside each rate."
    ]


def _why_latency_50k(results: Results) -> list[str]:
    rounds = [x for x in results.latency if x.rate == 50_000 and x.consumer in ("streampipe", "bare_loop")]
    if not rounds:
        return []
    listed = "; ".join(
        f"{x.consumer} p50 {x.p50_ms:.2f} ms, p99 {x.p99_ms:.2f} ms (producer lag max "
        f"{x.producer_max_lag_ms:.1f} ms)"
        for x in rounds
    )
    return [
        f"Every round at 50K/s, in the order run: {listed}. The medians are the per-read cost, and the p99 "
        "is set by stalls of the 2-core machine (producer, consumer and server share it; the producer's own "
        "worst lag behind its schedule shows how long such stalls are)."
    ]


def _why_scale_out(results: Results) -> list[str]:
    data = results.scale_out
    if data is None:
        return []
    top = max(c.rate for c in data.ceilings)
    most = max(x.processes for x in data.samples)
    four = max((s for s in data.samples if s.processes == most), key=lambda s: s.rate)
    server_us = four.server_cpu_us or 0.0
    cores = results.machine.usable_cores
    bound = cores / (four.consumer_cpu_us + server_us) * 1e6
    # The workers' CPU per entry at which the machine's bound is exactly the goal's share of the ceiling.
    allowed = cores * 1e6 / (SCALE_OUT_GOAL * top) - server_us
    lines = [
        f"With {most} workers each entry cost the worker processes {four.consumer_cpu_us:.2f} µs of CPU and "
        f"the server {server_us:.2f} µs. Both share {cores} cores, so at that cost the machine cannot move "
        f"more than {cores} / ({four.consumer_cpu_us:.2f} + {server_us:.2f}) µs = {_rate(bound)} entries/s, "
        f"{bound / top:.0%} of the server's ceiling ({_rate(top)}/s), however many workers run. "
        + (
            f"Adding workers cannot reach {SCALE_OUT_GOAL:.0%}; lowering the workers' CPU per entry to "
            f"{allowed:.2f} µs or less can."
            if allowed > 0
            else f"The server's own CPU per entry leaves no room for {SCALE_OUT_GOAL:.0%} on {cores} cores, "
            "whatever the workers cost: it needs cores the server does not share (workers on other nodes)."
        ),
    ]
    samples = _single(results)
    measured = [
        (LABELS[name], found.consumer_cpu_us)
        for name in ("streampipe", "bare_loop")
        if (found := _fastest(samples, name, data.batch)) is not None
    ]
    if measured:
        costs = ", ".join(f"{label} {cost:.2f} µs" for label, cost in measured)
        fastest = max(data.samples, key=lambda s: s.rate)
        lines.append(
            f"One process alone at batch {data.batch} (section 1) costs less: {costs}. {most} processes on "
            f"{cores} cores cost more per entry ({four.consumer_cpu_us:.2f} µs) because they take turns on "
            f"the cores, so here the best count was {fastest.processes} ({fastest.rate / top:.0%} of the "
            "ceiling). Every µs taken off the single worker also leaves more room for that overhead."
        )
    return lines


def _why_latency(results: Results) -> list[str]:
    chosen = best_latencies(results.latency)
    ours = next((x for x in chosen if x.consumer == "streampipe" and x.rate == 10_000), None)
    bare = next((x for x in chosen if x.consumer == "bare_loop" and x.rate == 10_000), None)
    if ours is None:
        return []
    lines = [
        f"At 10K/s the worker's p50 is {ours.p50_ms:.2f} ms and p99 {ours.p99_ms:.2f} ms; the producer's "
        f"worst lag behind its schedule was {ours.producer_max_lag_ms:.1f} ms."
    ]
    if bare is not None:
        lines.append(
            f"The bare loop, fed by the same producer in the same run, has p99 {bare.p99_ms:.2f} ms: "
            + (
                "it misses too, so the tail comes from the machine (producer, consumer and server "
                "competing for 2 cores, plus whatever else ran), not from the worker."
                if bare.p99_ms > 5
                else "the difference is the worker's own (per-batch work between reads)."
            )
        )
    return lines


def _why_operator(results: Results) -> list[str]:
    op = results.operator
    if op is None or not op.reaction_s:
        return []
    return [
        f"Reaction median {statistics.median(op.reaction_s):.2f} s, worst {max(op.reaction_s):.2f} s at "
        "pollInterval 1 s: the poll phase alone accounts for up to 1 s; the rest is the operator's pass "
        "(XINFO per group, the /scale patch) and the API server."
    ]


def _why_ready(results: Results) -> list[str]:
    op = results.operator
    if op is None or op.all_ready_s is None:
        return []
    return [
        f"{op.pipelines} pipelines took {op.all_ready_s:.1f} s ({op.pipelines / op.all_ready_s:.1f} per "
        "second), "
        f"with the operator at {op.ramp_cpu_percent:.0f} % of a core meanwhile"
        + (": it is CPU bound." if (op.ramp_cpu_percent or 0) >= 85 else ": it is waiting, not computing.")
    ]


WHY: dict[str, Callable[[Results], list[str]]] = {
    "Worker vs the tutorial loop": _why_tutorial,
    "Worker vs FastStream batch": _why_faststream,
    "4 workers vs the server ceiling": _why_scale_out,
    "p99 latency at 10K/s": _why_latency,
    "p99 latency at 50K/s vs bare loop": _why_latency_50k,
    "Worker vs bare loop, JSON handler, worst batch size": _why_json,
    "Operator reaction at pollInterval 1s (worst trial)": _why_operator,
    "1000 StreamPipelines Ready": _why_ready,
}

# What is left on the worker's side (from the profiles of these runs); the collector tuning, the
# sync handler on the event loop, the batch histogram and hiredis packing are done (docs/worker.md).
WORKER_NEXT = (
    "The bare loop pays for that parsing too, through redis-py's reply callbacks. The hot path's XACK + "
    "XREADGROUP go out as one write on the reader's own connection and come back through hiredis with no "
    "redis.asyncio layer per read (`read_channel.py`, `batch_reader.py`; a Cluster client pipelines). "
    "What is left per entry is its `Entry` object and field dict, the handler call and its ack id; per "
    "read, the event loop's wake-up and the write to the socket (the largest single item in a batch-1 "
    "profile). Beyond one process the lever is cores: worker replicas on other nodes do not share the "
    "server's."
)

PROPOSALS = {
    "Worker vs the tutorial loop": "the lever under *Where the worker's time goes* below.",
    "Worker vs bare loop, JSON handler, worst batch size": (
        "No code lever found at batch 1: py-spy on the worker with this handler at batch 1 (2026-12-04) "
        "shows the handler running on the event loop and the socket write as the largest item (46% of the "
        "samples). A quiet machine, or more rounds per batch size, would settle the verdict."
    ),
    "Worker vs FastStream batch": "the lever under *Where the worker's time goes* below.",
    "4 workers vs the server ceiling": (
        "Less CPU per entry in the worker is the only lever on a fixed 2-core machine (*Where the worker's "
        "time goes* below); it applies to every replica. Beyond that the bound is the machine: in a cluster, "
        "worker pods do not share the server's cores, and the goal is then a matter of replicas (the row "
        "per worker count and the CPU per entry give the number needed)."
    ),
    "p99 latency at 10K/s": (
        "Run the producer, the worker and the server on separate cores (as in a cluster); in the worker, "
        "hand the XACK of a small batch to the next read instead of a separate write, and keep BLOCK reads "
        "short-circuited when entries are waiting."
    ),
    "p99 latency at 50K/s vs bare loop": (
        "Traced (py-spy and per-entry latencies with their send times, 2026-12-04): the worker's median "
        "at 50K/s was twice the bare loop's because every read went through redis.asyncio (a pooled "
        "connection, a timeout per send and per reply, reply callbacks); the reader's own connection "
        "(docs/worker.md, *Delivery protocol*) brought the medians level. The stalls behind the p99 hit "
        "the bare loop and the worker alike, in different rounds; producer, consumer and server on "
        "separate cores (as in a cluster), or more rounds, would show the worker's own tail."
    ),
    "send_many vs redis-benchmark -P 1000": (
        "The ratio moves with the machine's load more than most (0.48x to 0.83x per round for the same "
        "code in runs of 2026-12-04). Every event is encoded before the first XADD is sent (nothing is sent "
        "if one is invalid), and the XADDs then go at the server's pace (chunks packed while the server "
        "writes the previous one), so the ratio is about redis-benchmark's time per XADD over that plus "
        "the encoding (pydantic-core's JSON encoder, about 0.5 µs an event)."
    ),
    "send_many (validated) vs redis-benchmark -P 1000": (
        "Validation is pydantic-core's validator and serializer per event (py-spy, 2026-12-04: 1.5 µs an "
        "event in one loop, half of send_many's time), and it all happens before the first XADD, while the "
        "server idles. Validating a chunk in one TypeAdapter(list[Model]) call measured no faster here "
        "(1.80 against 1.63 µs an event with serialization: the live models cost what the calls save). "
        "Remaining levers: validating on another core, or validating chunk by chunk while the previous one "
        "is written, which would give up 'nothing is sent if one event is invalid'."
    ),
    "Operator reaction at pollInterval 1s (worst trial)": (
        "Read the backlog of every group of a pipeline in one pipelined round trip and patch /scale in "
        "the same pass; wake the loop on the poll deadline instead of sleeping a fixed interval after the "
        "pass."
    ),
    "1000 StreamPipelines Ready": (
        "The operator is CPU bound while they become Ready (one Python process): less CPU per pass (the "
        "idle-CPU proposal) is the lever; the per-server client and its turns already removed the pool "
        "exhaustion and the reconnects."
    ),
    "Operator CPU, 1000 idle pipelines": (
        "An idle pass costs about 0.9 ms of CPU once passes share their round trips per tick, reuse the "
        "last status and run with the tuned collector (docs/operator.md, *Many pipelines*). What is left "
        "(py-spy, 1,000 idle pipelines): the event loop's wake-ups and timers, the shared round trips' "
        "parsing into pydantic models, kopf's daemon per pipeline. The next levers: build observations "
        "without model validation, and skip the pass's Kubernetes comparisons when neither the pipeline "
        "nor its Deployments changed."
    ),
}


def goals_section(results: Results) -> list[str]:
    lines = [
        "## Goals (2-core machine)",
        "",
        *_table(["goal", "target", "measured", "verdict"], goal_rows(results.goals), "llrl"),
    ]
    for goal in results.goals:
        if goal.met is not False:
            continue
        lines += [f"**{goal.name}: {goal.shortfall}.**", ""]
        for paragraph in WHY.get(goal.name, lambda _: [])(results):
            lines += [paragraph, ""]
        if goal.name in PROPOSALS:
            lines += [f"*What would close it:* {PROPOSALS[goal.name]}", ""]
    return lines


METHOD = """## Method

- **One server, one run, interleaved.** Every comparison runs against the same server in the same run,
  in rounds that take each competitor in turn, so load from elsewhere on the machine hits all of them
  alike; each competitor's best round counts. Ratios are therefore steadier than absolute figures.
- **Throughput** is read from outside: the group's acked count (XINFO GROUPS: entries-read minus
  pending) over a fixed window that starts after the consumer has acked its first entries and warmed
  up, so process start-up counts for no one. Each measurement uses a fresh consumer group at `0` on
  the same pre-filled stream (explicit ids `1-1`, `1-2`, ...). CPU figures are /proc utime+stime of
  the consumer processes and the server over the same window.
- **Server ceiling**: the workers' exact commands (XREADGROUP COUNT n, then XACK of those n ids)
  pre-packed and streamed over one connection with no client-side parsing; the ids of batch k are
  known because the stream's ids are explicit and one reader takes batches in order.
- **Latency** is open loop: the producer schedules entry k at `start + k/rate`, sends whatever is due
  in one pipelined write and never waits for replies; the entry carries its *scheduled* time
  (CLOCK_MONOTONIC ns), and the no-op handler records `now - scheduled`. A stall anywhere (producer,
  server, worker) therefore shows up in the figures instead of being skipped (no coordinated
  omission). Producer and worker share the machine's CLOCK_MONOTONIC, so there is no clock skew; the
  entry id's millisecond timestamp would be too coarse. The first second is dropped as warm-up.
- **Producer**: `send_many` is timed from ready `Event` objects to the last reply (encoding
  included); redis-benchmark sends the same XADD over one connection at the same pipeline depth.
- **Operator**: a real kube-apiserver and etcd (tests/controlplane), real Valkey, the operator as
  `streampipe operator run --kubeconfig ... --namespace bench`; no kubelet, so the operator's decisions
  are read from the Deployments it writes.
- **Noise**: the suite waits for a low load average before it starts (`--max-load`, `--max-wait`) and
  records the load before every benchmark; the figures above come with the load stated at the top.
"""


def machine_section(results: Results, source: Path) -> list[str]:
    m = results.machine
    rows = [
        [
            "CPU",
            f"{m.cpu_model}, {m.cores} cores ({m.usable_cores} usable)"
            + (", virtual machine" if m.virtualized else ""),
        ],
        ["memory", f"{m.memory_gib:.1f} GiB"],
        ["kernel / Python", f"{m.kernel} / {m.python}"],
        ["servers", ", ".join(m.servers.values())],
        ["packages", ", ".join(f"{k} {v}" for k, v in m.packages.items())],
        ["load average (1 min)", ", ".join(f"{s.label} {s.load1:.2f}" for s in results.load)],
        [
            "other work (cores)",
            ", ".join(f"{step} {cores:.2f}" for step, cores in machine.other_work(results.load)) or "-",
        ],
        [
            "CPU steal (hypervisor)",
            f"{results.load[-1].steal_s - results.load[0].steal_s:.1f} s during the run",
        ],
        [
            "run",
            f"`{results.command}`, {results.finished_at - results.started_at:.0f} s"
            + (
                f" ({results.waited_for_quiet_s:.0f} s of it waiting for a quiet machine)"
                if results.waited_for_quiet_s
                else ""
            ),
        ],
        [
            "raw results",
            ", ".join(f"`{name}`" for name in [_shown(source), *(x.source for x in results.supplements)]),
        ],
    ]
    return ["## Machine", "", *_table(["", ""], rows, "ll")]


def _shown(source: Path) -> str:
    return str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source)


def _supplement_lines(results: Results) -> list[str]:
    lines = []
    for extra in results.supplements:
        lines.append(
            f"From a run of its own, measured {when_text(extra.started_at)} "
            f"(`{extra.command}`, `{extra.source}`): "
            f"{', '.join(f'`{field}`' for field in extra.fields)}; its sections say so."
        )
    return [*lines, ""] if lines else []


# The Results fields a later run's file may fill in place of the main run's.
MERGEABLE = (
    "throughput", "scale_out", "latency", "producer", "partitions", "partitions_idle", "partition_latency",
    "rebalance", "memory", "operator", "profile", "server_paths",
)  # fmt: skip


def merge(results: Results, extra: Results, source: Path) -> None:
    """``extra``'s measured benchmarks in place of ``results``', recorded as a supplement."""
    taken = [name for name in MERGEABLE if getattr(extra, name)]
    if not taken:
        raise ValueError(f"{_shown(source)} holds no benchmark to take")
    for name in taken:
        setattr(results, name, getattr(extra, name))
    # An earlier supplement keeps only the benchmarks this one does not replace.
    earlier = [
        old.model_copy(update={"fields": [f for f in old.fields if f not in taken]})
        for old in results.supplements
    ]
    results.supplements = [
        *(old for old in earlier if old.fields),
        Supplement(
            source=_shown(source),
            command=extra.command,
            started_at=extra.started_at,
            fields=taken,
            load=extra.load,
        ),
    ]


def markdown(results: Results, source: Path, image: str) -> str:
    when = when_text(results.started_at)
    quick = " **Quick mode: tiny sizes, not for comparison.**" if results.settings.quick else ""
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `make bench` (bench/run.py, bench/report.py); edits here are overwritten. -->",
        "",
        f"Measured {when} on {_machine_line(results)}. {_load_line(results)}.{quick}",
        "",
        *_supplement_lines(results),
        f"![benchmarks]({image})",
        "",
        *ratio_section(results),
        *goals_section(results),
        *throughput_section(results),
        *scale_out_section(results),
        *latency_section(results),
        *producer_section(results),
        *operator_section(results),
        *memory_section(results),
        *server_paths_section(results),
        *partitions_sections(results),
        *worker_time_section(results),
        METHOD,
        *machine_section(results, source),
    ]
    if results.skipped:
        lines += ["Skipped: " + "; ".join(f"{k}: {v}" for k, v in results.skipped.items()), ""]
    if results.failed:
        lines += ["**Failed:** " + "; ".join(f"{k}: {v}" for k, v in results.failed.items()), ""]
    return "\n".join(lines).rstrip() + "\n"


# --- the plot --------------------------------------------------------------------------------------------


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(f"streampipe benchmarks, {results.date} ({_machine_line(results)})", fontsize=10)
    _plot_throughput(axes[0][0], results)
    _plot_scale_out(axes[0][1], results)
    _plot_latency(axes[1][0], results)
    _plot_operator(axes[1][1], results)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_throughput(ax: Any, results: Results) -> None:
    plot_ax = ax
    plot_ax.set_title("1. One consumer process, no-op handler")
    if results.throughput is None:
        return
    samples: list[Sample] = [s for s in results.throughput.samples if s.processes == 1]
    for consumer in (
        "streampipe",
        "bare_loop",
        "faststream_batch",
        "faststream_single",
        "streampipe_thread",
        "streampipe_gc_default",
    ):
        batches = sorted({s.batch for s in samples if s.consumer == consumer})
        if batches:
            rates = [best(samples, consumer, b) for b in batches]
            style = ":" if consumer in DIAGNOSTIC else "-"
            label, color = LABELS[consumer], COLORS[consumer]
            plot_ax.plot(batches, rates, style, marker="o", label=label, color=color)
    tutorial = best(samples, "tutorial_loop")
    if tutorial:
        plot_ax.axhline(
            tutorial, linestyle="--", color=COLORS["tutorial_loop"], label=LABELS["tutorial_loop"]
        )
    plot_ax.set_xscale("log")
    plot_ax.set_yscale("log")
    plot_ax.set_xlabel("XREADGROUP batch size")
    plot_ax.set_ylabel("entries/s")
    plot_ax.grid(True, which="both", alpha=0.3)
    plot_ax.legend(fontsize=8)


def _plot_scale_out(ax: Any, results: Results) -> None:
    plot_ax = ax
    plot_ax.set_title("2. Worker processes vs the server's ceiling")
    data = results.scale_out
    if data is None:
        return
    top = max(c.rate for c in data.ceilings)
    counts = sorted({s.processes for s in data.samples})
    rates = [max(s.rate for s in data.samples if s.processes == c) for c in counts]
    bars = plot_ax.bar([str(c) for c in counts], rates, color=COLORS["streampipe"])
    for bar, rate in zip(bars, rates, strict=True):
        plot_ax.annotate(
            f"{rate / top:.0%}", (bar.get_x() + bar.get_width() / 2, rate), ha="center", va="bottom"
        )
    plot_ax.axhline(top, color="black", linestyle="--", label=f"server ceiling {_rate(top)}/s")
    plot_ax.axhline(
        SCALE_OUT_GOAL * top, color="grey", linestyle=":", label=f"goal: {SCALE_OUT_GOAL:.0%} of the ceiling"
    )
    most = max((s for s in data.samples if s.processes == counts[-1]), key=lambda s: s.rate)
    if most.server_cpu_us:
        cores = results.machine.usable_cores
        bound = cores / (most.consumer_cpu_us + most.server_cpu_us) * 1e6
        label = f"{cores} cores / (worker + server CPU per entry) = {_rate(bound)}/s"
        plot_ax.axhline(bound, color=COLORS["streampipe"], linestyle="-.", label=label)
    plot_ax.set_ylim(top=top * 1.35)  # room for the legend above the ceiling line
    plot_ax.set_xlabel(f"worker processes (batch {data.batch})")
    plot_ax.set_ylabel("entries/s")
    plot_ax.legend(fontsize=8, loc="upper left", ncol=2)


def _plot_latency(ax: Any, results: Results) -> None:
    plot_ax = ax
    plot_ax.set_title("3. Latency, XADD to handler done (open loop)")
    if not results.latency:
        return
    rates = sorted({x.rate for x in results.latency})
    chosen = best_latencies(results.latency)
    width = 0.13
    series = [("streampipe", "p50_ms", 0.35), ("streampipe", "p99_ms", 0.7), ("streampipe", "p999_ms", 1.0)]
    series += [("bare_loop", "p50_ms", 0.35), ("bare_loop", "p99_ms", 0.7), ("bare_loop", "p999_ms", 1.0)]
    for index, (consumer, field, alpha) in enumerate(series):
        values = []
        for rate in rates:
            found = next((x for x in chosen if x.rate == rate and x.consumer == consumer), None)
            values.append(getattr(found, field) if found else 0)
        positions = [i + (index - 2.5) * width for i in range(len(rates))]
        label = f"{LABELS[consumer]} {field.removesuffix('_ms').replace('p999', 'p99.9')}"
        plot_ax.bar(positions, values, width, alpha=alpha, color=COLORS[consumer], label=label)
    plot_ax.axhline(5, color="black", linestyle=":", label="goal: p99 <= 5 ms at 10K/s")
    plot_ax.set_xticks(range(len(rates)), [f"{r:,}/s" for r in rates])
    plot_ax.set_yscale("log")
    tallest = max((x.p999_ms for x in chosen), default=10.0)
    plot_ax.set_ylim(top=tallest * 40)  # headroom on the log scale, so the legend covers no bar
    plot_ax.set_ylabel("ms")
    plot_ax.legend(fontsize=7, ncol=2, loc="upper left")


def _plot_operator(ax: Any, results: Results) -> None:
    plot_ax = ax
    op = results.operator
    if op is None or not op.ready_curve:
        plot_ax.set_title("5. Operator: not measured in this run")
        return
    reaction = (
        f"; reaction median {statistics.median(op.reaction_s):.2f} s, worst {max(op.reaction_s):.2f} s"
        if op.reaction_s
        else ""
    )
    plot_ax.set_title(f"5. {op.pipelines} StreamPipelines becoming Ready{reaction}", fontsize=9)
    xs = [p[0] for p in op.ready_curve]
    ys = [p[1] for p in op.ready_curve]
    plot_ax.plot(xs, ys, color=COLORS["streampipe"])
    plot_ax.axvline(60, color="grey", linestyle=":", label="goal: all Ready in 60 s")
    plot_ax.set_xlabel("seconds since kubectl apply")
    plot_ax.set_ylabel("pipelines Ready")
    plot_ax.legend(fontsize=8)


def plot_growth(results: Results, path: Path) -> None:
    """Operator RSS, idle CPU, Redis connections and API requests against the number of pipelines."""
    op = results.operator
    if op is None or not op.growth:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [point.pipelines for point in op.growth]
    panels = [
        ("idle RSS (MiB)", [point.idle_rss_mb for point in op.growth], 500.0),
        ("idle CPU (% of one core)", [point.idle_cpu_percent for point in op.growth], 20.0),
        ("Redis connections held", [float(point.redis_connections) for point in op.growth], None),
        ("API writes per minute, idle", [point.api_writes_per_min for point in op.growth], None),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 3.6))
    fig.suptitle(f"The operator with 10 to {max(sizes):,} StreamPipelines, {results.date}", fontsize=10)
    for ax, (title, values, goal) in zip(axes, panels, strict=True):
        ax.plot(sizes, values, marker="o", color=COLORS["streampipe"])
        if goal is not None:
            ax.axhline(goal, color="grey", linestyle=":", label=f"goal at 1,000: <= {goal:g}")
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("pipelines")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: Results, docs: Path, source: Path) -> None:
    image = docs.with_suffix(".png")
    plot(results, image)
    plot_growth(results, docs.with_name(GROWTH_IMAGE))
    docs.write_text(markdown(results, source, image.name), encoding="utf-8")


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python bench/report.py bench/results/<date>.json [EXTRA.json...]", file=sys.stderr)
        return 2
    source, *extras = (Path(arg).resolve() for arg in argv)
    results = Results.model_validate_json(source.read_text(encoding="utf-8"))
    for extra in extras:
        merge(results, Results.model_validate_json(extra.read_text(encoding="utf-8")), extra)
    # Ratios and goals are derived: recompute them, so a re-render follows this file's rules.
    results.ratios, results.goals = goals.ratios(results), goals.goals(results)
    write(results, ROOT / "docs" / "benchmarks.md", source)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
