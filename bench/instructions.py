"""Before/after in CPU instructions per entry: the worker of a git revision against the working tree.

    python bench/instructions.py --base 37a91aa                 # batch 1, 10, 100, 1000
    python bench/instructions.py --base HEAD~1 --batch 100 --json

``bench/compare.py`` answers "what did this change do" in entries per second, and a rate moves with
whatever else the machine runs: on a shared 2-core box two runs of the same code differ by 10%, which
hides a 3% change. This counts instead. The real ``streampipe-worker`` (no-op handler, every feature
on) runs under valgrind's callgrind, which counts the instructions the process executes, the Python
interpreter's included, and does not care how busy the machine is. The worker drains a stream of
``--small`` example events once and of ``--large`` once; the difference of the two totals divided by
the difference in entries is the cost of one entry, with start-up, shutdown and the idle reads before
the SIGTERM cancelled out. Hash randomisation is fixed (PYTHONHASHSEED=0) so dict layouts repeat.

Instructions are not time: a cache miss costs more than an add. But both variants run the same
interpreter on the same server with the same commands, so a change in the worker's own Python shows
up one to one, which is what a refactor has to prove. Needs ``valgrind`` (Debian's package).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from compare import code_of, export_worker
from harness import (
    WORKER_COMMAND,
    fill_example_stream,
    group_progress,
    log_tail,
    progress,
    running_server,
    worker_env,
)

BATCH_SIZES = (1, 10, 100, 1000)
VARIANTS = ("base", "head")
_TOTAL = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Count:
    """Instructions of one worker run that drained ``entries`` entries."""

    variant: str
    batch: int
    entries: int
    instructions: int


@dataclass(frozen=True)
class PerEntry:
    """Instructions per entry of one variant at one batch size (difference of two runs)."""

    variant: str
    batch: int
    instructions: float


def callgrind_total(path: Path) -> int:
    """The total instruction count callgrind wrote into ``path`` at exit."""
    found = _TOTAL.search(path.read_bytes())
    if found is None:
        raise RuntimeError(f"{path}: no 'summary:' or 'totals:' line; did the worker exit cleanly?")
    return int(found.group(1))


def drain_under_callgrind(url: str, stream: str, entries: int, batch: int, workdir: Path) -> int:
    """Run one worker under callgrind until its group acked ``entries``; return its instruction count."""
    client = redis.Redis.from_url(url, decode_responses=True)
    group = f"ir-{secrets.token_hex(3)}"
    client.xgroup_create(stream, group, id="0")
    env = worker_env(url, stream, group, consumer="ir1", handler="probe_handlers:noop", batch_size=batch)
    env["PYTHONHASHSEED"] = "0"
    out = workdir / f"callgrind.{group}.out"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *WORKER_COMMAND]
    with tempfile.TemporaryFile(mode="w+b") as log:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 1800
            while group_progress(client, stream, group)[1] < entries:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode}: {log_tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{group}: not drained in 1800 s: {log_tail(log)}")
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            if proc.wait(300) != 0:
                raise RuntimeError(f"worker exited with {proc.returncode}: {log_tail(log)}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            client.xgroup_destroy(stream, group)
            client.close()
    return callgrind_total(out)


@contextlib.contextmanager
def filled_streams(sizes: Sequence[int]) -> Iterator[tuple[str, dict[int, str]]]:
    """A Valkey on a free port holding one stream of example events per size."""
    with running_server("valkey9") as server:
        streams = {size: f"bench:ir:{size}" for size in sizes}
        for size, stream in streams.items():
            fill_example_stream(server.url, stream, size)
        yield server.url, streams


def measure(
    base: str, batch_sizes: Sequence[int], small: int, large: int, workdir: Path
) -> tuple[list[Count], list[PerEntry]]:
    base_path = export_worker(base, workdir / "base")
    counts: list[Count] = []
    with filled_streams((small, large)) as (url, streams):
        for batch in batch_sizes:
            for variant in VARIANTS:
                with code_of(variant, base_path):
                    for entries in (small, large):
                        total = drain_under_callgrind(url, streams[entries], entries, batch, workdir)
                        counts.append(Count(variant, batch, entries, total))
                        progress(f"{variant} batch {batch}: {entries:,} entries, {total:,} instructions")
    per_entry = []
    for batch in batch_sizes:
        for variant in VARIANTS:
            at = {c.entries: c.instructions for c in counts if c.variant == variant and c.batch == batch}
            per_entry.append(PerEntry(variant, batch, (at[large] - at[small]) / (large - small)))
    return counts, per_entry


def report(per_entry: Sequence[PerEntry], base: str) -> str:
    lines = [
        f"instructions per entry, worker at {base} (base) vs the working tree (head)",
        f"{'batch':>6} {'base':>12} {'head':>12} {'head/base':>10}",
    ]
    for batch in sorted({p.batch for p in per_entry}):
        of = {p.variant: p.instructions for p in per_entry if p.batch == batch}
        lines.append(f"{batch:>6} {of['base']:>12,.0f} {of['head']:>12,.0f} {of['head'] / of['base']:>9.3f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision whose worker/ is the baseline")
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable)")
    parser.add_argument("--small", type=int, default=2000, help="entries of the short run")
    parser.add_argument("--large", type=int, default=12000, help="entries of the long run")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    if not 0 < args.small < args.large:
        parser.error("--small must be positive and below --large")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    with tempfile.TemporaryDirectory(prefix="streampipe-ir-") as tmp:
        counts, per_entry = measure(args.base, args.batch or BATCH_SIZES, args.small, args.large, Path(tmp))
    if args.json:
        document = {"counts": [asdict(c) for c in counts], "per_entry": [asdict(p) for p in per_entry]}
        print(json.dumps(document))
    else:
        print(report(per_entry, args.base))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
