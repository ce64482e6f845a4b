"""MkDocs hooks: the reference pages generated from the code at every build, and the result plots.

- reference/cli.md: every `vlgen` subcommand and option, from the argparse parsers;
- reference/config.md: every training config key with its type, default and meaning, from the
  config dataclasses (the meaning is the comment on the field's line or the lines above it);
- results/...: the tables' plots under benchmarks/results/, where the commands wrote them.

tests/test_docs.py compares both pages with the parsers and dataclasses.
"""
import argparse
import dataclasses
import inspect
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIELD = re.compile(r"^    (\w+): ([^=]+?)(?: = (.+?))?(?:\s+#\s*(.*))?$")


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def subcommands():
    """{name: (help, parser)} of every `vlgen` subcommand, in the parser's order."""
    from vlgen.commands.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}


def _default(action):
    if action.required or action.default in (None, argparse.SUPPRESS) or isinstance(action, argparse._HelpAction):
        return ""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return ""
    return f"`{action.default}`" if action.default != [] else ""


def cli_page():
    lines = ["# Command line", "",
             "Every `vlgen` subcommand and its options, generated from the parsers at each build "
             "(`vlgen SUBCOMMAND --help` prints the same). Errors are one line; `--traceback` before the "
             "subcommand, or `VLGEN_TRACEBACK=1`, shows the full traceback.", ""]
    for name, (help_text, parser) in subcommands().items():
        lines += [f"## vlgen {name}", "", _cell(help_text), "", "```text", parser.format_usage().strip(), "```", "",
                  "| option | default | meaning |", "|---|---|---|"]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            names = ", ".join(f"`{option}`" for option in action.option_strings) or f"`{action.dest}` (positional)"
            meaning = action.help or ""
            if action.choices and not isinstance(action.choices, dict):
                meaning += f" (one of: {', '.join(map(str, action.choices))})"
            lines.append(f"| {names} | {_cell(_default(action))} | {_cell(meaning)} |")
        lines.append("")
    return "\n".join(lines)


def config_fields():
    """[(section, key, type, default, meaning)] of every training config key, from the dataclasses'
    source: a field's meaning is its line's comment, else the comment lines just above it."""
    from vlgen.training.config import Config

    rows = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        source, above = inspect.getsource(cls).splitlines(), []
        for line in source[1:]:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# "))
                continue
            match = FIELD.match(line)
            if match and not stripped.startswith("def "):
                key, annotation, default, comment = match.groups()
                rows.append((section.name, key, annotation.strip(), (default or "").strip(),
                             comment or " ".join(above)))
            above = []
    return rows


def config_page():
    lines = ["# Training config", "",
             "Every key of a training config (`vlgen train --config FILE.yaml`, `--set SECTION.KEY=VALUE`), "
             "generated from the config dataclasses (`vlgen.training.config`) at each build. A YAML file has "
             "the sections below; `base: other.yaml` starts from another file; unknown keys and wrong types are "
             "errors naming the key.", ""]
    current = None
    for section, key, annotation, default, meaning in config_fields():
        if section != current:
            lines += ["", f"## {section}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
            current = section
        lines.append(f"| `{section}.{key}` | `{_cell(annotation)}` | `{_cell(default)}` | {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


def on_files(files, config):
    for uri, content in (("reference/cli.md", cli_page()), ("reference/config.md", config_page())):
        files.append(File.generated(config, uri, content=content))
    for path in sorted(RESULTS.rglob("*.png")):
        uri = "results/" + path.relative_to(RESULTS).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
