"""Comments and docstrings say why the code is as it is, not how it got there: no issue numbers
and no "was tried" stories (those belong in commit messages and notes). Read as text, never
imported."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("daemon", "streams", "learners", "schemas", "benchmarks", "tests")
HISTORY = re.compile(r"\bissues? #?\d+\b|\b(?:was|were) tried\b", re.I)


def history_in(source: str) -> list[tuple[int, str]]:
    """(line, text) of each comment or string token that tells history."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING) and HISTORY.search(tok.string):
            found.append((tok.start[0], HISTORY.search(tok.string).group(0)))
    return found


def test_no_history_in_comments_or_docstrings():
    bad = []
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue  # this file names the patterns it looks for
            for line, text in history_in(path.read_text()):
                bad.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert not bad, "say why, not what happened before:\n" + "\n".join(bad)


def test_the_check_sees_comments_and_docstrings_but_not_code():
    src = '"""See issue 12."""\nx = 1  # a batched variant was tried\nissue_3 = "fine"\n'
    assert [line for line, _ in history_in(src)] == [1, 2]
