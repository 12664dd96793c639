"""Is an ad hoc query one read-only statement? Decided before it reaches the engine.

ClickHouse's ``readonly=1`` (set on every read-only query, ``store.ClickHouseStore.query``)
stops table writes and the file/url table functions, but not ``SELECT ... INTO OUTFILE``: the
embedded engine writes that file itself, wherever the path points. chdb also runs every
statement of ``a; b``. So the text is checked first, with a lexer that mirrors ClickHouse's for
what can hide a keyword: quoted strings and identifiers, heredocs (``$tag$...$tag$``), ``--``
and ``# `` comments and nested ``/* */`` comments. A keyword inside any of those is data, not
SQL, so ``WHERE note = 'INTO OUTFILE'`` passes. Where the lexers could disagree the check
errs towards refusing; ``readonly=1`` stays on as the second line.
"""

from __future__ import annotations

import re

from daemon.errors import EigenloopError

ALLOWED_FIRST = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN")
# the other statements ClickHouse knows: refused as writes (or session changes); any other first
# word is a typo, reported as the syntax error it is
OTHER_STATEMENTS = frozenset((
    "INSERT", "CREATE", "ATTACH", "DETACH", "DROP", "UNDROP", "TRUNCATE", "ALTER", "RENAME", "EXCHANGE",
    "OPTIMIZE", "SET", "USE", "EXISTS", "CHECK", "KILL", "SYSTEM", "GRANT", "REVOKE", "BACKUP", "RESTORE",
    "DELETE", "UPDATE", "WATCH", "MOVE", "BEGIN", "COMMIT", "ROLLBACK", "REPLACE", "PARALLEL"))

_WORD = re.compile(r"[A-Za-z0-9_$]+")
_HEREDOC = re.compile(r"\$([A-Za-z0-9_]*)\$")


class UnsafeQuery(EigenloopError, ValueError):
    """The text is not one read-only statement; ``str()`` says why, for a person, and ``kind``
    what sort of failure it is (the prefix of the CLI's error line)."""

    kind = "read-only"


class MalformedQuery(UnsafeQuery):
    """Not SQL at all (a typo, an unclosed quote): ClickHouse would refuse it too."""

    kind = "bad SQL"


def _skip_quoted(sql: str, i: int) -> int:
    """End of the string/identifier opening at ``i``: backslash escapes, doubled quote."""
    quote = sql[i]
    i += 1
    while i < len(sql):
        c = sql[i]
        if c == "\\":
            i += 2
        elif c == quote:
            if i + 1 < len(sql) and sql[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    raise MalformedQuery(f"Syntax error: unterminated {quote}quoted{quote} text")


def _skip_block_comment(sql: str, i: int) -> int:
    # pairs are consumed two characters at a time, as ClickHouse does: "/*/" opens, not closes
    depth, i = 1, i + 2
    while i + 1 < len(sql):
        pair = sql[i:i + 2]
        if pair == "/*":
            depth += 1
            i += 2
        elif pair == "*/":
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    raise MalformedQuery("Syntax error: unterminated /* comment")


def code_tokens(sql: str) -> list[tuple[int, str]]:
    """(offset, token) for what ClickHouse parses as SQL: words and single punctuation
    characters; strings, quoted identifiers, heredocs, comments and whitespace are dropped."""
    out: list[tuple[int, str]] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            i = _skip_quoted(sql, i)
        elif sql.startswith("--", i) or (c == "#" and sql[i + 1:i + 2] in (" ", "!")):
            nl = sql.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif c == "$" and (m := _HEREDOC.match(sql, i)) and (end := sql.find(m.group(0), m.end())) >= 0:
            i = end + len(m.group(0))
        elif (m := _WORD.match(sql, i)):
            out.append((i, m.group(0)))
            i = m.end()
        elif c.isspace() or not c.isascii():
            # non-ASCII never belongs to a bare word in ClickHouse; treating it as a separator
            # (zero-width space included) keeps "INTO\u200bOUTFILE" two words
            i += 1
        else:
            out.append((i, c))
            i += 1
    return out


def check_read_only(sql: str) -> str:
    """The statement to run (trailing ``;`` removed), or ``UnsafeQuery`` saying why not."""
    tokens = code_tokens(sql)
    words = [t.upper() for _, t in tokens]
    if ";" in words:
        cut = words.index(";")
        if any(w != ";" for w in words[cut:]):
            raise UnsafeQuery("one statement at a time (found ';' followed by more SQL)")
        sql, tokens, words = sql[:tokens[cut][0]], tokens[:cut], words[:cut]
    first = next((w for w in words if w != "("), None)
    allowed = f"{', '.join(ALLOWED_FIRST[:-1])} or {ALLOWED_FIRST[-1]}"
    if first is None:
        raise MalformedQuery("empty query")
    if first not in ALLOWED_FIRST:
        if first in OTHER_STATEMENTS:
            raise UnsafeQuery(f"only {allowed} statements may run here (got {first})")
        raise MalformedQuery(f"Syntax error: no statement starts with {first} (a query starts with {allowed})")
    if "OUTFILE" in words:
        raise UnsafeQuery("INTO OUTFILE writes a file; use --format csv/json and redirect the output")
    for a, b in zip(words, words[1:]):
        # WITH ... INSERT INTO is a write; "insert" then "into" is no pair of identifiers
        if a == "INSERT" and b == "INTO":
            raise UnsafeQuery("INSERT is a write")
    return sql.strip()
