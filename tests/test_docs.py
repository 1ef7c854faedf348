"""The README and docs/ stay true: every command they show parses, every config key they name exists, every
relative link (and #anchor) resolves.

Commands are the `dfew_mm ...`, `python preprocess/extract.py ...`, `python benchmarks/<x>.py ...` and
`torchrun ... -m dfew_mm.cli ...` lines of code blocks, and inline code spans that start the same way.
Each is parsed by the real argparse parser (nothing runs): flags, choices and types, the `key=value`
overrides against the config schema, `--config` against the shipped configs, `--modalities` against the
registry. Placeholders parse as values: upper-case words and single letters (ROOT, STORE, K, S), shell
variables ($k), `a|b` alternatives (the first), `[optional]` brackets; a span or line that leaves arguments
out (`...`, or an inline mention such as `dfew_mm cv`) need not give the required ones.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
LINK = re.compile(r"(?<!!)\[(?:[^\]]*)\]\(([^)\s]+)\)")
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*|[A-Za-z])$")
OVERRIDE = re.compile(r"^(data|model|train)\.[\w.]+=")
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class Shown:
    """A piece of a page: a code line (joined over `\\` continuations) or an inline code span."""

    page: Path
    line: int
    text: str
    inline: bool

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def read_page(page: Path) -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
    """(line number, fence language, text) of every code line, and (line number, text) of the prose lines."""
    code, prose, lang = [], [], None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line.strip())
        if fence:
            lang = fence.group(1) if lang is None else None
        elif lang is not None:
            code.append((number, lang, line))
        else:
            prose.append((number, line))
    return code, prose


def shown_pieces(page: Path) -> list[Shown]:
    code, prose = read_page(page)
    pieces: list[Shown] = []
    pending, start = "", 0
    for number, lang, line in code:
        if lang in ("yaml", "python", "text"):
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        pieces.append(Shown(page, start, (pending + line).strip(), inline=False))
        pending = ""
    # inline spans may wrap over lines within a paragraph: match over the paragraph's text
    paragraph: list[tuple[int, str]] = []
    for number, line in [*prose, (10 ** 9, "")]:
        if line.strip() and (not paragraph or paragraph[-1][0] == number - 1):
            paragraph.append((number, line))
            continue
        text = "\n".join(t for _, t in paragraph)
        for match in INLINE.finditer(text):
            line_no = paragraph[0][0] + text[:match.start()].count("\n")
            pieces.append(Shown(page, line_no, " ".join(match.group(1).split()), inline=True))
        paragraph = [(number, line)] if line.strip() else []
    return pieces


# -- commands --------------------------------------------------------------------------------
def command_of(text: str) -> tuple[str, list[str]] | None:
    """('dfew_mm <sub>' | 'preprocess/extract.py' | 'benchmarks/x.py', arguments) for a shown command, else None."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return None
    while tokens and (ENV.match(tokens[0]) or tokens[0] in ("nice", "nohup", "env")):
        tokens.pop(0)
    if not tokens:
        return None
    if tokens[0] == "torchrun" and "-m" in tokens and tokens[tokens.index("-m") + 1:][:1] == ["dfew_mm.cli"]:
        tokens = ["dfew_mm", *tokens[tokens.index("-m") + 2:]]
    if tokens[0] == "dfew_mm":
        return "dfew_mm", tokens[1:]
    if tokens[0] in ("python", "python3") and len(tokens) > 1:
        script = tokens[1]
        if script == "preprocess/extract.py":  # main(["extract", *argv]) of the CLI
            assert (REPO / script).is_file(), script
            return "dfew_mm", ["extract", *tokens[2:]]
        if re.fullmatch(r"benchmarks/\w+\.py", script):
            return script, tokens[2:]
    return None


def concrete(args: list[str]) -> tuple[list[str], bool]:
    """Placeholders made parseable; also whether the command leaves arguments out."""
    out, partial = [], False
    for arg in args:
        if arg in ("...", "…"):
            partial = True
            continue
        if arg.startswith("[-"):
            arg = arg[1:]
        if arg.endswith("]") and "[" not in arg:
            arg = arg[:-1]
        arg = re.sub(r"\$\{?\w+\}?", "1", arg)
        if "=" not in arg and "|" in arg:
            arg = arg.split("|")[0]
        if "=" in arg and not arg.startswith("-"):
            key, _, value = arg.partition("=")
            arg = f"{key}={'1' if PLACEHOLDER.match(value) else value}"
        elif PLACEHOLDER.match(arg):
            arg = "1"
        if arg and arg != "--help":
            out.append(arg)
    return out, partial


@contextlib.contextmanager
def nothing_required(parser: argparse.ArgumentParser):
    """Let a parser accept a command that leaves its required arguments out (restored afterwards)."""
    saved = [(a, a.required, a.nargs) for a in parser._actions]
    groups = [(g, g.required) for g in parser._mutually_exclusive_groups]
    for action in parser._actions:
        action.required = False
        if not action.option_strings and action.nargs == "+":
            action.nargs = "*"
    for group, _ in groups:
        group.required = False
    try:
        yield parser
    finally:
        for action, required, nargs in saved:
            action.required, action.nargs = required, nargs
        for group, required in groups:
            group.required = required


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


_SCRIPT_PARSERS: dict[str, argparse.ArgumentParser] = {}


def script_parser(script: str) -> argparse.ArgumentParser:
    """The parser a script builds in main(): run it as __main__ until its parse_args call, which hands the
    parser over instead of parsing (the benchmarks build their parser first thing)."""
    if script not in _SCRIPT_PARSERS:
        path = REPO / script
        if not path.is_file():
            raise AssertionError(f"{script}: no such script")

        def capture(self, *args, **kwargs):
            raise _Captured(self)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(argparse.ArgumentParser, "parse_args", capture)
            mp.setattr(sys, "argv", [str(path)])
            mp.syspath_prepend(str(path.parent))
            try:
                runpy.run_path(str(path), run_name="__main__")
            except _Captured as got:
                _SCRIPT_PARSERS[script] = got.parser
            else:
                raise AssertionError(f"{script} never calls ArgumentParser.parse_args")
    return _SCRIPT_PARSERS[script]


def cli_parser(sub: str) -> argparse.ArgumentParser:
    from dfew_mm.cli import COMMANDS

    if sub not in COMMANDS:
        raise AssertionError(f"dfew_mm {sub}: no such command (commands: {', '.join(COMMANDS)})")
    subparsers = argparse.ArgumentParser(prog="dfew_mm").add_subparsers()
    COMMANDS[sub][0](subparsers)
    return subparsers.choices[sub]


def parse(parser: argparse.ArgumentParser, args: list[str], partial: bool) -> argparse.Namespace:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), (nothing_required(parser) if partial else contextlib.nullcontext()):
        try:
            return parser.parse_args(args)
        except SystemExit:
            raise AssertionError(stderr.getvalue().strip().splitlines()[-1]) from None


def check_override(item: str) -> None:
    """`key=value` names a key of the config schema and a value of its type."""
    from dfew_mm.config import ExperimentConfig

    try:
        OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.from_dotlist([item]))
    except OmegaConfBaseException as err:
        raise AssertionError(f"override {item}: {type(err).__name__}: {err.msg}") from None


def check_command(text: str, inline: bool = False) -> bool:
    """Raise AssertionError if a shown command does not parse; False if `text` is no command."""
    found = command_of(text)
    if found is None:
        return False
    program, args = found
    args, partial = concrete(args)
    if program == "dfew_mm":
        if not args:
            return True
        parser = cli_parser(args.pop(0))
    else:
        parser = script_parser(program)
    ns = parse(parser, args, partial or inline)
    for item in getattr(ns, "overrides", None) or []:
        check_override(item)
    config = getattr(ns, "config", None)
    if config and "/" not in config and not config.endswith(".yaml") and config != "1":
        from dfew_mm.config import shipped_configs

        assert config in shipped_configs(), f"--config {config}: not a shipped config"
    modalities = getattr(ns, "modalities", None)
    if isinstance(modalities, str) and modalities != "1":
        from dfew_mm.models.encoders import resolve_modalities

        resolve_modalities(modalities.replace("+", ","))
    return True


PIECES = [piece for page in PAGES for piece in shown_pieces(page)]
COMMANDS = [p for p in PIECES if command_of(p.text) is not None]
OVERRIDES = [p for p in PIECES if command_of(p.text) is None and OVERRIDE.match(p.text)]


@pytest.mark.parametrize("shown", COMMANDS, ids=str)
def test_shown_command_parses(shown: Shown):
    assert check_command(shown.text, shown.inline), shown.text


@pytest.mark.parametrize("shown", OVERRIDES, ids=str)
def test_shown_override_names_a_config_key(shown: Shown):
    for item in concrete(shown.text.split())[0]:
        if OVERRIDE.match(item):
            check_override(item)


def test_shown_config_files_load(tmp_path):
    """YAML examples that start from a base are experiments: they load against the schema."""
    from dfew_mm.config import load_config

    examples = 0
    for page in PAGES:
        code, _ = read_page(page)
        blocks: dict[int, list[str]] = {}
        block = None
        for number, lang, line in code:
            if lang != "yaml":
                continue
            if block is None or number != blocks[block][-1][0] + 1:
                block = number
                blocks[block] = []
            blocks[block].append((number, line))
        for start, lines in blocks.items():
            text = "\n".join(line for _, line in lines)
            if "base" in (yaml.safe_load(text) or {}):
                path = tmp_path / f"{page.stem}_{start}.yaml"
                path.write_text(text)
                load_config(path)
                examples += 1
    assert examples


def test_set_up_commands_are_those_of_ci():
    """The README's set-up block runs exactly what .ci/run runs to install and test."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^## Set up\n+```bash\n(.*?)\n```", text, re.S | re.M)
    assert block, "README.md has no ## Set up section with a bash block"
    steps = [step.strip() for line in block.group(1).splitlines() for step in line.split("&&")]
    ci = {line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()}
    assert steps and [s for s in steps if s not in ci] == []
    assert 'pip install -e ".[dev]"' in steps and "pytest" in steps


# -- links -----------------------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for _, line in read_page(page)[1]:
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if heading:
            base = slug(heading.group(1))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def links(page: Path) -> list[tuple[int, str]]:
    out = []
    for number, line in read_page(page)[1]:
        for match in LINK.finditer(INLINE.sub("", line)):
            target = match.group(1)
            if not re.match(r"^[a-z]+:", target):
                out.append((number, target))
    return out


def link_problem(page: Path, target: str) -> str | None:
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    if not dest.exists():
        return f"{path}: no such file"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"#{anchor}: no such heading in {dest.name}"
    return None


LINKS = [(page, number, target) for page in PAGES for number, target in links(page)]


@pytest.mark.parametrize("page, number, target", LINKS,
                         ids=[f"{p.relative_to(REPO)}:{n}:{t}" for p, n, t in LINKS])
def test_relative_link_resolves(page: Path, number: int, target: str):
    problem = link_problem(page, target)
    assert problem is None, f"{page.relative_to(REPO)}:{number}: {problem}"


# -- the checks themselves catch what they are for -------------------------------------------
@pytest.mark.parametrize("text", [
    "dfew_mm train --config tiny --no-such-flag",
    "dfew_mm evaluate --checkpoint x.pt --store s --out p.csv --split nonsense",
    "dfew_mm train --config tiny train.no_such_key=1",
    "dfew_mm train --config tiny train.epochs=many",
    "dfew_mm train --config no_such_config",
    "dfew_mm cv --modalities video,smell --out runs/cv",
    "dfew_mm cv --config tiny",  # a whole line without the required --out
    "dfew_mm no_such_command",
    "python preprocess/extract.py --dfew-root /data/DFEW --out f --frames sixteen",
    "python benchmarks/extract_bench.py --no-such-flag",
    "python benchmarks/no_such_bench.py",
])
def test_a_broken_command_fails(text):
    with pytest.raises(Exception):
        check_command(text)


def test_placeholders_and_partial_commands_pass():
    assert check_command("dfew_mm evaluate --checkpoint runs/cv/fold_$k/best.pt --store STORE_S --out p.csv "
                         "[--fold k] [--split test|val|train] [--modalities video+pose]")
    assert check_command("dfew_mm train ... --stop-after 5")
    assert check_command("dfew_mm embed", inline=True)
    assert check_command("python preprocess/extract.py --dfew-root ROOT --out NEW_STORE --split test --fold K")
    assert not check_command("papermill notebooks/low_light_analysis.ipynb out.ipynb")


def test_a_broken_link_fails(tmp_path):
    (tmp_path / "a.md").write_text("# Title here\n\n[ok](#title-here) [bad](b.md) [bad anchor](#nowhere)\n")
    page = tmp_path / "a.md"
    assert [link_problem(page, t) is None for _, t in links(page)] == [True, False, False]
