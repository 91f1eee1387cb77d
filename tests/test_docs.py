"""The docs cannot drift from the project: README.md, CONTRIBUTING.md and docs/*.md.

Every relative link reaches a file (and, for `#anchor`, a heading of that page), every
command example in a fenced code block composes with Hydra, as `--cfg job` would compose it,
and docs/config-reference.md is what `make docs` generates from the schema today.
A block that must not be composed (it shows a mistake on purpose) is preceded by the line
`<!-- docs-test: skip -->`.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override

import pipeline.cli.app  # noqa: F401  (registers the ${project_root:} resolver)
from pipeline.cli.reference import PAGE, render

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARK = "<!-- docs-test: skip -->"

# The top-level config (conf/<name>.yaml) of each command; `doctor` takes no overrides.
CONFIG_NAMES = {
    "train": "config",
    "evaluate": "evaluate",
    "generate": "generate",
    "export": "export",
    "prepare": "config",
}
# `-m pipeline.<command>` at the start of a command (after python, srun, torchrun ... -m), not in
# a comment, and followed by a space: `python -m pipeline.train: ...` in a layout table is prose.
COMMAND = re.compile(r"^[^#]*(?<!\S)-m pipeline\.(\w+)(\s.*)?$")
MAKE = re.compile(r"^make (train|sweep|search)\b(.*)$")
OPTIONS_WITH_VALUE = {"--cfg", "--from-run"}  # `--cfg job`, `--from-run <run id>`
SHELL_SYNTAX = re.compile(r"\d*[<>].*|&&?|\|\|?|;")  # a redirection, &, &&, |, ||, ;
PLACEHOLDER = re.compile(r"<[^<>]+>")  # `<run>`, `<run folder>`: any plain string will do
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), ![alt](target)
CODE_SPAN = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def code_blocks(lines: list[str]) -> Iterator[tuple[int, int]]:
    """(opening fence, closing fence) indices of each fenced code block."""
    opening = None
    for index, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            if opening is None:
                opening = index
            else:
                yield opening, index
                opening = None


def blank_code_blocks(text: str) -> str:
    """The text with its fenced code blocks blanked, line numbers kept: a `# comment` line in a
    block is not a heading, and `[x](y)` in code is not a link."""
    lines = text.splitlines()
    for opening, closing in code_blocks(lines):
        lines[opening : closing + 1] = [""] * (closing + 1 - opening)
    return "\n".join(lines)


def prose(page: Path) -> str:
    """The page without code: blocks and code spans blanked, line numbers kept."""
    return CODE_SPAN.sub(lambda span: " " * len(span[0]), blank_code_blocks(page.read_text()))


@functools.cache
def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: the heading text without markup (a link's text
    stays, backticks go), lowercased, punctuation but hyphens and underscores removed, spaces to
    hyphens; a repeated slug gets -1, -2, ..."""
    found: set[str] = set()
    for heading in HEADING.findall(blank_code_blocks(page.read_text())):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        repeat = 0
        while (candidate := f"{slug}-{repeat}" if repeat else slug) in found:
            repeat += 1
        found.add(candidate)
    return found


def broken_links(page: Path) -> Iterator[str]:
    """`page:line: target (why)` for each relative link of the page that leads nowhere."""
    text = prose(page)
    for link in LINK.finditer(text):
        target, _, anchor = link[1].partition("#")
        if re.match(r"(https?|mailto):", target):
            continue
        line = text.count("\n", 0, link.start()) + 1
        where = f"{page.relative_to(ROOT)}:{line}"
        dest = (page.parent / target).resolve() if target else page
        if not dest.exists():
            yield f"{where}: {link[1]} (no such file)"
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            yield f"{where}: {link[1]} (no heading with this anchor in {dest.name})"


def test_relative_links_resolve() -> None:
    broken = [problem for page in PAGES for problem in broken_links(page)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def command_lines(block: list[str], first: int) -> Iterator[tuple[int, str]]:
    """The block's lines with backslash continuations joined, each with its first line's
    number, without a console's `$ ` prompt."""
    start, joined = first, ""
    for number, line in enumerate(block, first):
        start = start if joined else number
        joined += line.strip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        yield start, joined.removeprefix("$ ")
        joined = ""


def overrides_of(args: list[str]) -> list[str]:
    """The Hydra overrides among a command's arguments: options (`-m`, `--cfg job`, `--resolve`,
    `--from-run <id>`, ...) and a literal `...` (more overrides) are dropped, and so is what
    follows a redirection or a shell operator (`> train.log 2>&1 &`)."""
    overrides, rest = [], iter(args)
    for arg in rest:
        if SHELL_SYNTAX.fullmatch(arg):
            break
        if arg in OPTIONS_WITH_VALUE:
            next(rest, None)
        elif not arg.startswith("-") and arg != "...":
            overrides.append(arg)
    return overrides


def example_args(line: str) -> tuple[str, list[str]] | None:
    """(command, overrides) of a `python -m pipeline.<command>` or `make train|sweep|search`
    line; None for any other line."""
    line = PLACEHOLDER.sub("placeholder", line)
    if make := MAKE.match(line):
        target, assignments = make[1], shlex.split(make[2], comments=True)
        variables = dict(a.split("=", 1) for a in assignments if "=" in a)
        overrides = shlex.split(variables.get("ARGS", ""))
        if target == "search":  # the Makefile's `-m hparams_search=$(SEARCH)`
            overrides.insert(0, f"hparams_search={variables.get('SEARCH', 'optim')}")
        return "train", overrides
    command = COMMAND.match(line)
    if not command or command[1] not in CONFIG_NAMES:
        return None
    return command[1], overrides_of(shlex.split(command[2] or "", comments=True))


def examples() -> Iterator[tuple[str, str, list[str]]]:
    """(`page:line`, command, overrides) of every example outside a skipped block."""
    for page in PAGES:
        lines = page.read_text().splitlines()
        for opening, closing in code_blocks(lines):
            if opening > 0 and lines[opening - 1].strip() == SKIP_MARK:
                continue
            for number, line in command_lines(lines[opening + 1 : closing], opening + 2):
                if found := example_args(line):
                    yield f"{page.relative_to(ROOT)}:{number}", *found


def first_value(override: Override) -> str:
    """A sweep override (`a=1,2`, `range()`, `choice()`, `glob()`) as its first value: composing
    a single config refuses sweeps, and every trial composes with one value anyway."""
    sweep = override.value()
    if isinstance(sweep, Glob):  # a glob matches the group's options, which live in conf/
        options = sorted(p.stem for p in (CONF / override.key_or_group).glob("*.yaml"))
        value = sweep.filter(options)[0]
    else:
        value = next(override.sweep_string_iterator())
    return f"{override.get_key_element()}={value}"


@pytest.mark.parametrize(
    ("command", "overrides"), [pytest.param(c, o, id=where) for where, c, o in examples()]
)
def test_example_composes(command: str, overrides: list[str]) -> None:
    parsed = OverridesParser.create().parse_overrides(overrides)
    single = [first_value(o) if o.is_sweep_override() else o.input_line for o in parsed]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        compose(CONFIG_NAMES[command], single)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("$ .venv/bin/python -m pipeline.train model.n_heads=3", ("train", ["model.n_heads=3"])),
        ("python -m pipeline.train -m a=1,2 --cfg job --resolve  # it's", ("train", ["a=1,2"])),
        (
            "srun python -m pipeline.train --from-run 5f05 b=<run folder> ...",
            ("train", ["b=placeholder"]),
        ),
        (
            "make search ARGS=\"model=gpt-tiny x='1 2'\" SEARCH=lora",
            ("train", ["hparams_search=lora", "model=gpt-tiny", "x=1 2"]),
        ),
        (
            "nohup python -m pipeline.train a=1 > train.log 2>&1 &",
            ("train", ["a=1"]),
        ),
        ("train.py   python -m pipeline.train: one experiment", None),
        ("evaluate/  # python -m pipeline.evaluate ckpt=x", None),
        ("python -m pipeline.doctor", None),
    ],
)
def test_example_lines_are_read_as_the_shell_would(line: str, expected: tuple | None) -> None:
    assert example_args(line) == expected


def test_the_config_reference_is_generated_from_the_schema_of_today() -> None:
    committed = (ROOT / PAGE).read_text()
    assert committed == render(), "docs/config-reference.md is stale: run make docs"
    # Every key of the schema is on the page, with the docstring under its field.
    assert "| `data.max_length` | int | `64` | > 1 | Tokens per example" in committed
    assert "| `ckpt` | path | (required) |" in committed
