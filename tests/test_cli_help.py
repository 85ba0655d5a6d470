"""Every help screen of the command line exits 0 with no traceback and shows an example."""

import argparse
import re
from pathlib import Path

import pytest

import sacvit.cli


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every subcommand path of ``parser``, found from the parser itself (nested ones included)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found += _subcommands(sub, (*prefix, name))
    return found


SUBCOMMANDS = _subcommands(sacvit.cli.build_parser())


def test_the_walk_finds_every_registered_command():
    assert {path[0] for path in SUBCOMMANDS} == set(sacvit.cli.COMMANDS)


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as done:
        sacvit.cli.main(argv)
    assert done.value.code == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and not err.strip(), err
    return out


@pytest.mark.parametrize("path", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_help_exits_0_with_an_example(path, capsys):
    out = _help([*path, "--help"], capsys)
    assert out.startswith(f"usage: sacvit {' '.join(path)}")
    assert "example" in out.lower(), f"`sacvit {' '.join(path)} --help` shows no example"
    assert "%(" not in out and "%%" not in out  # every format placeholder was expanded


def test_top_level_help_lists_every_command(capsys):
    out = _help(["--help"], capsys)
    assert out.startswith("usage: sacvit")
    for name in sacvit.cli.COMMANDS:
        assert f"    {name}" in out
    assert "examples:" in out


def test_no_arguments_prints_the_overview_and_exits_0(capsys):
    assert sacvit.cli.main([]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: sacvit") and "train" in out and "predict" in out
    assert not err


README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
DURATION = re.compile(r"(?:~|about )?\d+(?:[.–]\d+)? (?:min|minutes|h)\b")


@pytest.mark.parametrize("path", SUBCOMMANDS, ids=" ".join)
def test_every_duration_in_a_help_is_the_readmes(path, capsys):
    """A help screen quotes the README's measured durations, never a guess (``~2 h``)."""
    out = _help([*path, "--help"], capsys)
    for found in DURATION.finditer(out):
        duration = found.group()
        if "checkpoint" in out[max(0, found.start() - 60):found.start()]:
            continue  # "--checkpoint-minutes", "every 20 minutes": settings, not durations
        assert not duration.startswith(("~", "about")), f"`sacvit {' '.join(path)} --help`: {duration!r} is a guess"
        assert duration in README, f"`sacvit {' '.join(path)} --help` says {duration!r}; the README does not"
