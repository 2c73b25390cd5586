"""The README's commands cannot drift from behaviour: every command block runs as documented (slow), and
every option its command lines name exists in that command's parser (fast)."""

from __future__ import annotations

import re

import pytest
from readme_blocks import command_blocks, run_blocks, usage_blocks

from distill.cli import _parser


def _subcommands() -> dict[str, set[str]]:
    parser = _parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}


def _command_lines(text: str) -> list[str]:
    """Each `distill ...` command (continuation lines joined), wherever it starts on its line."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [m.group(0) for m in re.finditer(r"(?:distill(?:\.cli)?|bin/distill) [^\n#]*", joined)]


def test_the_readme_has_command_blocks_and_servers_are_followed_by_a_block_that_uses_them():
    blocks = command_blocks()
    assert len(blocks) >= 10
    for i, b in enumerate(blocks):
        if b.background:
            assert "--port" in b.text and i + 1 < len(blocks) and not blocks[i + 1].background, b.line


def test_every_option_a_readme_command_names_exists_in_its_parser():
    options = _subcommands()
    texts = [b.text for b in command_blocks()] + usage_blocks()
    checked = 0
    for text in texts:
        for line in _command_lines(text):
            words = line.split()
            command = next((w for w in words[1:] if w in options), None)
            if command is None:
                continue
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line):
                assert flag in options[command] or flag in ("--help", "--version"), f"`{line}`: no {flag}"
                checked += 1
    assert checked > 30


@pytest.mark.slow
def test_every_readme_command_block_runs_as_documented(tmp_path):
    outcomes = run_blocks(tmp_path / "tour", command_blocks())
    failed = [f"README line {o.line} (exit {o.code}):\n{o.tail}" for o in outcomes if not o.ok]
    assert not failed, "\n\n".join(failed)
