"""runbooks/: one file per alert with the four sections, the task runbooks the issue lists, an
index, flagged destructive steps, namespaced commands, and every quoted `eigenloop ...` command
parses (`eigenloop <subcommand path> --help` succeeds and lists every option the runbook uses).

The parse check runs the real console script, so it fails while a quoted command is not
written yet; the failure lists each such command with the file and line that quotes it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

from tests.ops.chart import REPO, load_values, render_values

RUNBOOKS = REPO / "runbooks"
EIGENLOOP = REPO / ".venv" / "bin" / "eigenloop"
ALERT_SECTIONS = ["Meaning", "Impact", "Diagnosis", "Mitigation"]
# The task runbooks an SRE needs beside the alert runbooks.
TASK_RUNBOOKS = [
    "deploy-upgrade-rollback.md", "replay-from-time.md", "rollback-block-or-policy-version.md",
    "consumer-lag.md", "kafka-outage.md", "clickhouse-outage.md", "gpu-oom-or-no-gpu.md",
    "exchange-websocket-storms-and-bans.md", "kill-switch-and-live-trading.md", "corrupt-snapshot.md",
]
TASK_SECTIONS = ["Symptoms", "Diagnosis", "Verify"]


def chart_alerts() -> set[str]:
    values = load_values("monitoring-values.yaml", overrides={"gpu": {"enabled": True}})
    r = render_values(values)
    return {rule["alert"] for obj in r.kind("PrometheusRule") for g in obj["spec"]["groups"] for rule in g["rules"]}


def headings(text: str) -> list[str]:
    return re.findall(r"^## +(.+?)\s*$", text, flags=re.M)


# --- structure -------------------------------------------------------------------------------

@pytest.mark.parametrize("alert", sorted(chart_alerts()))
def test_alert_runbook(alert):
    path = RUNBOOKS / f"{alert}.md"
    assert path.is_file(), f"alert {alert} has no runbooks/{alert}.md"
    text = path.read_text()
    assert text.splitlines()[0] == f"# {alert}", "the title must be the alert name, exactly"
    got = [h for h in headings(text) if h in ALERT_SECTIONS]
    assert got == ALERT_SECTIONS, f"sections {got}, want {ALERT_SECTIONS} in that order"
    mitigation = text.split("## Mitigation", 1)[1]
    assert re.search(r"(?im)^#+ .*verify|^\*\*verify", mitigation), "Mitigation must end with a verify step"
    assert "```" in text.split("## Diagnosis", 1)[1], "Diagnosis needs commands to paste"


@pytest.mark.parametrize("name", TASK_RUNBOOKS)
def test_task_runbook(name):
    path = RUNBOOKS / name
    assert path.is_file(), f"runbooks/{name} is missing"
    text = path.read_text()
    assert text.startswith("# ")
    hs = headings(text)
    for section in TASK_SECTIONS:
        assert any(h.startswith(section) for h in hs), f"{name}: no '## {section}' section (has {hs})"
    assert "```" in text


def test_index_links_every_runbook():
    index = (RUNBOOKS / "README.md").read_text()
    links = set(re.findall(r"\]\(([^)#]+\.md)\)", index))
    files = {p.name for p in RUNBOOKS.glob("*.md")} - {"README.md"}
    assert files <= links, f"not in the index: {sorted(files - links)}"
    for link in links:
        assert (RUNBOOKS / link).is_file(), f"index links a missing file: {link}"


def test_relative_links_resolve():
    for path in RUNBOOKS.glob("*.md"):
        for link in re.findall(r"\]\((?!https?://)([^)#\s]+)", path.read_text()):
            assert (path.parent / link).exists(), f"{path.name}: broken link {link}"


def code_blocks(text: str) -> list[tuple[int, int, str]]:
    """(first line, last line, body) of every fenced block, 1-based line numbers."""
    blocks, lines, start = [], text.splitlines(), None
    for i, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            if start is None:
                start = i
            else:
                blocks.append((start, i, "\n".join(lines[start:i - 1])))
                start = None
    return blocks


# Steps that lose data, stop learning or acting, move real money, or cannot be undone.
DESTRUCTIVE = re.compile(
    r"kubectl\b.*\bdelete\b|--replicas[= ]0\b|helm (rollback|uninstall)|\brm -|\bmv \b|"
    r"kill-switch off|--i-understand-live-trading|liveTrading\.enabled=true|learner (rollback|pin-blocks)|"
    r"topics\.partitions=|kafka stop|--reset-offsets")


def test_destructive_steps_are_flagged():
    unflagged = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        text = path.read_text()
        lines = text.splitlines()
        prev_end = 0
        for start, end, body in code_blocks(text):
            if DESTRUCTIVE.search(body):
                lead = "\n".join(lines[max(prev_end, start - 12):start - 1])
                if not re.search(r"\*\*(WARNING|DANGER)\b", lead):
                    unflagged.append(f"{path.name}:{start}: {DESTRUCTIVE.search(body).group(0)!r}")
            prev_end = end
    assert not unflagged, "destructive steps without a **WARNING** or **DANGER** just above:\n" + "\n".join(unflagged)


def test_commands_are_scoped_to_the_namespace():
    bad = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        for start, _, body in code_blocks(path.read_text()):
            for k, line in enumerate(_joined(body)):
                cmd = line.strip()
                # charts rendered locally and cluster-scoped node commands have no namespace
                local = re.match(r"helm (repo|lint|template|dependency)\b|kubectl (cordon|uncordon|drain|"
                                 r"(get|describe|top) nodes?)\b|kubectl create namespace\b", cmd)
                if re.match(r"(kubectl|helm)\s", cmd) and not local:
                    if not re.search(r"(-n|--namespace)[ =]eigenloop\b", cmd):
                        bad.append(f"{path.name}:{start + k + 1}: {cmd[:80]}")
    assert not bad, "kubectl/helm commands without -n eigenloop:\n" + "\n".join(bad)


# --- the quoted eigenloop commands ------------------------------------------------------------

@dataclass(frozen=True)
class Quoted:
    where: str  # file:line
    text: str  # the command as quoted
    path: tuple[str, ...]  # subcommand path, e.g. ("snapshot", "list")
    options: tuple[str, ...]  # long/short options used, e.g. ("--from-time",)


def _joined(body: str) -> list[str]:
    """Lines with backslash continuations joined (line numbers then refer to the first line)."""
    out, cur = [], ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


# `eigenloop` where a shell would run it: line start (after an optional prompt), after `--` of
# `kubectl exec ... --`, after && || ; | or `$(`. Not `-n eigenloop`, not `eigenloop-daemon-0`.
_START = re.compile(r"(?:^\s*(?:\$\s+)?|\s--\s+|&&\s*|\|\|?\s*|;\s*|\$\(\s*)(?P<cmd>eigenloop)(?=\s|$)")
_STOP = {"|", "||", "&&", "&", ";", ")", "(", ">", ">>", "<", "2>"}


def _tokens(rest: str) -> list[str]:
    """Shell words of one command, up to the first unquoted operator or comment."""
    lex = shlex.shlex(rest, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    out = []
    try:
        for tok in lex:
            if tok in _STOP:
                break
            out.append(tok)
    except ValueError:  # an unbalanced quote: keep what was read
        pass
    return out


def _quoted(where: str, rest: str) -> Quoted:
    tokens = _tokens(rest)[1:]  # drop "eigenloop"
    path: list[str] = []
    i = 0
    while i < len(tokens) and not tokens[i].startswith("-"):
        path.append(tokens[i])
        i += 1
    options = tuple(sorted({t.split("=", 1)[0] for t in tokens[i:] if re.match(r"--?[A-Za-z]", t)}))
    text = " ".join(["eigenloop", *(shlex.quote(t) for t in tokens)])
    return Quoted(where, text, tuple(path), options)


def extract_commands() -> list[Quoted]:
    found = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        text = path.read_text()
        for start, _, body in code_blocks(text):
            for k, line in enumerate(_joined(body)):
                for m in _START.finditer(line):
                    found.append(_quoted(f"{path.name}:{start + k + 1}", line[m.start("cmd"):]))
        # inline code in prose: `eigenloop snapshot list`
        in_block = False
        for n, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("```"):
                in_block = not in_block
                continue
            if not in_block:
                for span in re.findall(r"`(eigenloop(?:\s[^`]*)?)`", line):
                    found.append(_quoted(f"{path.name}:{n}", span))
    return found


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EIGENLOOP_")}
    env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb")
    return env


@lru_cache(maxsize=1)
def help_pages() -> dict[tuple[str, ...], tuple[int, str]]:
    """`eigenloop <path> --help` of every distinct quoted path, all from one process
    (tests/ops/cli_help.py calls the console script's entry point; one start instead of dozens)."""
    paths = sorted({q.path for q in extract_commands()})
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(Path(__file__).with_name("cli_help.py"))],
                          input=json.dumps(paths), capture_output=True, text=True, env=_env(), timeout=300, cwd=REPO)
    assert proc.returncode == 0, f"cli_help.py failed:\n{proc.stderr[-3000:]}"
    return {p: (code, out) for p, (code, out) in zip(paths, json.loads(proc.stdout))}


def test_console_script_runs():
    proc = subprocess.run([str(EIGENLOOP), "--help"], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0 and "Usage: eigenloop" in proc.stdout, proc.stdout + proc.stderr


def _why(rc: int, out: str) -> str:
    errors = [ln.strip(" │╭╮╰╯─") for ln in out.splitlines() if "No such command" in ln or "Error" in ln
              or "error" in ln.lower()]
    errors = [e for e in errors if e and not set(e) <= set("─ ")]
    return (errors[-1] if errors else out.strip().splitlines()[-1] if out.strip() else "no output") + f" (exit {rc})"


def test_runbooks_quote_enough_commands():
    cmds = extract_commands()
    paths = {q.path for q in cmds}
    assert len(cmds) >= 40 and len(paths) >= 15, f"only {len(cmds)} commands, {len(paths)} subcommands found"
    # the extractor must not mistake namespaces or resource names for commands
    assert all(q.path[:1] != ("exec",) and "-daemon-0" not in q.text for q in cmds)


def test_every_quoted_eigenloop_command_parses():
    pages = help_pages()
    failures = []
    by_path: dict[str, int] = {}
    def order(q: Quoted) -> tuple[str, int]:
        name, line = q.where.rsplit(":", 1)
        return name, int(line)

    for q in sorted(extract_commands(), key=order):
        rc, out = pages[q.path]
        shown = "eigenloop " + " ".join(q.path)
        if rc != 0:
            failures.append(f"{q.where}: `{q.text}`: `{shown} --help` fails: {_why(rc, out)}")
        else:
            missing = [o for o in q.options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", out)]
            if not missing:
                continue
            failures.append(f"{q.where}: `{q.text}`: `{shown} --help` has no option {', '.join(missing)}")
        by_path[shown] = by_path.get(shown, 0) + 1
    if failures:
        summary = "\n".join(f"  {k}: {n} quote(s)" for k, n in sorted(by_path.items()))
        pytest.fail(f"{len(failures)} quoted command(s) do not parse yet:\n" + "\n".join(failures)
                    + f"\n\nby subcommand:\n{summary}", pytrace=False)
