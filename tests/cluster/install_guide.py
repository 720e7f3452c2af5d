"""docs/install.md as data: its console blocks, as the scenarios and steps a runner follows.

Every ```` ```console ```` block of the page is preceded, on the line right before its fence, by a tag:

- ``<!-- install-guide: scenario=helm,finalizer-by-hand step=install -->``: the block is the step
  ``install`` of each scenario listed; a scenario's steps run in the order the page has them;
- ``<!-- install-guide: skip="why" -->``: the block is not run (the reason is required).

In a block, a line starting with ``$ `` is a command; a line ending with ``\\`` continues on the next
line (joined with one space, as the shell would); every other line is output and is ignored. Anything
unexpected (an untagged block, an unknown key or scenario, a step named twice in one scenario, a tag
with no block after it, a block without a command) is a ``GuideError`` naming the line, so that the
page cannot drift away from what the runner checks without a test failing.

Pure: parsing reads text and returns values; nothing is run here.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL_GUIDE = ROOT / "docs" / "install.md"

# The paths through the page; a tag naming another one is an error, not a new scenario.
SCENARIOS = ("helm", "crds-separately", "namespaced", "ha", "finalizer-by-hand")

TAG = re.compile(r"^<!--\s*install-guide:(?P<body>.*?)-->$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>\S*)\s*$")
STEP_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
PROMPT = "$ "


class GuideError(ValueError):
    """The page's console blocks and tags do not follow the rules above; ``line`` is where."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line


@dataclass(frozen=True)
class Command:
    """One shell command, continuation lines joined; ``lines`` are the page's 1-based line numbers."""

    text: str
    lines: tuple[int, ...]


@dataclass(frozen=True)
class Step:
    """One console block as one scenario runs it; ``order`` counts from 0 within the scenario."""

    scenario: str
    order: int
    name: str
    commands: tuple[Command, ...]
    lines: tuple[int, int]


@dataclass(frozen=True)
class SkippedBlock:
    reason: str
    commands: tuple[Command, ...]
    lines: tuple[int, int]


@dataclass(frozen=True)
class Guide:
    steps: tuple[Step, ...]
    skipped: tuple[SkippedBlock, ...]

    def scenario(self, name: str) -> tuple[Step, ...]:
        if name not in SCENARIOS:
            raise KeyError(f"no scenario {name!r}; known: {', '.join(SCENARIOS)}")
        return tuple(sorted((s for s in self.steps if s.scenario == name), key=lambda s: s.order))


@dataclass(frozen=True)
class _Tag:
    scenarios: tuple[str, ...]
    step: str | None
    skip: str | None
    line: int


@dataclass(frozen=True)
class _Block:
    tag: _Tag | None
    commands: tuple[Command, ...]
    lines: tuple[int, int]


def parse_tag(body: str, line: int) -> _Tag:
    """``scenario=a,b step=name`` or ``skip="reason"`` (values may be quoted as in a shell)."""
    try:
        words = shlex.split(body)
    except ValueError as exc:
        raise GuideError(line, f"unreadable install-guide tag ({exc})") from None
    fields: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or key not in {"scenario", "step", "skip"}:
            raise GuideError(line, f"unknown install-guide tag entry {word!r}")
        if key in fields:
            raise GuideError(line, f"{key} given twice")
        fields[key] = value
    if "skip" in fields:
        if set(fields) != {"skip"} or not fields["skip"].strip():
            raise GuideError(line, "skip takes a reason and nothing else")
        return _Tag((), None, fields["skip"], line)
    scenarios = tuple(fields.get("scenario", "").split(","))
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise GuideError(line, f"unknown scenario {unknown}; known: {', '.join(SCENARIOS)}")
    step = fields.get("step", "")
    if not STEP_NAME.match(step):
        raise GuideError(line, f"step name {step!r} missing or not lower-case-with-dashes")
    return _Tag(scenarios, step, None, line)


def parse_commands(body: list[tuple[int, str]]) -> tuple[Command, ...]:
    """The ``$`` commands of one block's lines (line number, text without the fence's indent)."""
    commands: list[Command] = []
    parts: list[str] = []
    numbers: list[int] = []
    for number, text in body:
        if parts:
            parts.append(text.strip())
            numbers.append(number)
        elif text.startswith(PROMPT):
            parts.append(text[len(PROMPT) :].strip())
            numbers.append(number)
        else:
            continue  # output shown on the page
        if parts[-1].endswith("\\"):
            parts[-1] = parts[-1][:-1].rstrip()
        else:
            commands.append(Command(" ".join(parts), tuple(numbers)))
            parts, numbers = [], []
    if parts:
        raise GuideError(numbers[-1], "the block ends inside a continued command")
    return tuple(commands)


def _blocks(text: str) -> list[_Block]:
    lines = text.splitlines()
    blocks: list[_Block] = []
    pending: _Tag | None = None
    index = 0
    while index < len(lines):
        number = index + 1
        fence = FENCE.match(lines[index])
        if pending is not None and fence is None:
            raise GuideError(pending.line, "install-guide tag not followed by a console block")
        if fence is None:
            tag = TAG.match(lines[index].strip())
            pending = parse_tag(tag["body"], number) if tag else None
            index += 1
            continue
        # A fenced block: find its end, whatever its language, so that its content is not read as tags.
        indent = fence["indent"]
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise GuideError(number, "code block never closed")
        if fence["info"] == "console":
            body = [(i + 1, lines[i].removeprefix(indent)) for i in range(index + 1, end)]
            commands = parse_commands(body)
            if not commands:
                raise GuideError(number, "console block without a `$ ` command")
            blocks.append(_Block(pending, commands, (number, end + 1)))
        elif pending is not None:
            raise GuideError(pending.line, f"install-guide tag before a {fence['info']!r} block")
        pending = None
        index = end + 1
    if pending is not None:
        raise GuideError(pending.line, "install-guide tag not followed by a console block")
    return blocks


def parse_guide(text: str) -> Guide:
    """The page's steps per scenario, in page order, and the blocks it marks as not run."""
    steps: list[Step] = []
    skipped: list[SkippedBlock] = []
    for block in _blocks(text):
        tag = block.tag
        if tag is None:
            raise GuideError(block.lines[0], "console block without an install-guide tag")
        if tag.skip is not None:
            skipped.append(SkippedBlock(tag.skip, block.commands, block.lines))
            continue
        assert tag.step is not None  # parse_tag returns a step for every tag that is not a skip
        for scenario in tag.scenarios:
            earlier = [s for s in steps if s.scenario == scenario]
            if any(s.name == tag.step for s in earlier):
                raise GuideError(tag.line, f"scenario {scenario} has a step {tag.step} already")
            steps.append(Step(scenario, len(earlier), tag.step, block.commands, block.lines))
    return Guide(tuple(steps), tuple(skipped))


def load_guide(path: Path = INSTALL_GUIDE) -> Guide:
    return parse_guide(path.read_text())
