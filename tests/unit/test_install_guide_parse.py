"""docs/install.md parses into the scenarios tests/cluster/test_install_guide.py runs (offline)."""

from __future__ import annotations

import pytest

from tests.cluster.install_guide import (
    INSTALL_GUIDE,
    SCENARIOS,
    Command,
    GuideError,
    Step,
    load_guide,
    parse_guide,
)


def test_every_command_of_the_page_is_parsed_once() -> None:
    guide = load_guide()  # raises on an untagged block or an unknown tag
    page = INSTALL_GUIDE.read_text().splitlines()
    prompt_lines = {n for n, line in enumerate(page, start=1) if line.lstrip().startswith("$ ")}
    blocks = {s.lines: s.commands for s in guide.steps} | {s.lines: s.commands for s in guide.skipped}
    parsed = [command.lines[0] for commands in blocks.values() for command in commands]
    assert sorted(parsed) == sorted(prompt_lines)


def test_every_scenario_has_steps_in_page_order() -> None:
    guide = load_guide()
    for scenario in SCENARIOS:
        steps = guide.scenario(scenario)
        assert [s.order for s in steps] == list(range(len(steps)))
        assert [s.lines for s in steps] == sorted(s.lines for s in steps), scenario
        assert steps, scenario


def test_the_main_path_of_the_page() -> None:
    # The runner hangs its checks on these names; renaming a step on the page must show up here.
    assert [s.name for s in load_guide().scenario("helm")] == [
        "install",
        "namespace",
        "pipeline",
        "quickstart",
        "upgrade",
        "delete-pipelines",
        "uninstall",
        "remove-crds",
    ]


def test_the_page_applies_examples_that_exist() -> None:
    guide = load_guide()
    applied = {
        word
        for step in guide.steps
        for command in step.commands
        for word in command.text.split()
        if word.startswith(("examples/", "charts/"))
    }
    missing = sorted(p for p in applied if not (INSTALL_GUIDE.parents[1] / p).exists())
    assert applied
    assert missing == []


PAGE = """\
Intro with `<!-- install-guide: inline -->` in prose, which is not a tag.

<!-- install-guide: scenario=helm,ha step=install -->
```console
$ helm install streampipe charts/streampipe \\
    --namespace streampipe-system \\
    --create-namespace
NAME: streampipe
$ kubectl get crd x   # a comment
```

```yaml
# not a console block: no tag needed
```

1. A list item:

   <!-- install-guide: skip="needs a password" -->
   ```console
   $ kubectl create secret generic s --from-literal=password=change-me
   ```
"""


def test_a_page_with_continuations_lists_and_skips() -> None:
    guide = parse_guide(PAGE)
    install = Command(
        "helm install streampipe charts/streampipe --namespace streampipe-system --create-namespace",
        (5, 6, 7),
    )
    crd = Command("kubectl get crd x   # a comment", (9,))
    assert guide.steps == (
        Step("helm", 0, "install", (install, crd), (4, 10)),
        Step("ha", 0, "install", (install, crd), (4, 10)),
    )
    assert [(s.reason, s.commands, s.lines) for s in guide.skipped] == [
        (
            "needs a password",
            (Command("kubectl create secret generic s --from-literal=password=change-me", (20,)),),
            (19, 21),
        )
    ]


@pytest.mark.parametrize(
    ("page", "line"),
    [
        pytest.param("```console\n$ ls\n```\n", 1, id="untagged"),
        pytest.param(
            "<!-- install-guide: scenario=helm step=a colour=red -->\n```console\n$ ls\n```\n", 1, id="key"
        ),
        pytest.param(
            "<!-- install-guide: scenario=kind step=a -->\n```console\n$ ls\n```\n", 1, id="scenario"
        ),
        pytest.param("<!-- install-guide: scenario=helm -->\n```console\n$ ls\n```\n", 1, id="no-step"),
        pytest.param("<!-- install-guide: skip= -->\n```console\n$ ls\n```\n", 1, id="skip-no-reason"),
        pytest.param(
            "<!-- install-guide: skip=x scenario=helm step=a -->\n```console\n$ ls\n```\n",
            1,
            id="skip-and-step",
        ),
        pytest.param("<!-- install-guide: scenario=helm step=a -->\n\n```console\n$ ls\n```\n", 1, id="gap"),
        pytest.param("<!-- install-guide: scenario=helm step=a -->\n```yaml\na: 1\n```\n", 1, id="yaml"),
        pytest.param(
            "<!-- install-guide: scenario=helm step=a -->\n```console\nout\n```\n", 2, id="no-command"
        ),
        pytest.param(
            "<!-- install-guide: scenario=helm step=a -->\n```console\n$ ls \\\n```\n", 3, id="dangling"
        ),
        pytest.param(
            "<!-- install-guide: scenario=helm step=a -->\n```console\n$ ls\n```\n"
            "<!-- install-guide: scenario=helm step=a -->\n```console\n$ ls\n```\n",
            5,
            id="step-twice",
        ),
    ],
)
def test_a_page_that_breaks_the_rules(page: str, line: int) -> None:
    with pytest.raises(GuideError) as raised:
        parse_guide(page)
    assert raised.value.line == line
