"""The README, run: every ```console block is followed as a new user would, and its output must
match what the README shows; every ```toml block must pass `fazt-agent config check` in the file
it belongs in.

How the console blocks run. All of them, in README order, run in ONE bash session (the README is
one user's story: later blocks build on the ops folder of the example session), started in a
fresh home folder with `fazt-agent` on PATH from this venv. Each `$ ` line is a command; the
lines up to the next `$ ` are its expected output (stdout and stderr together, in the order a
terminal shows them: PYTHONUNBUFFERED). A command spans several lines for a heredoc
(`<<'EOF'` ... `EOF`) or a trailing backslash. Bash runs each command as written (a `# comment`
is bash's own), with stdin from /dev/null.

Substitutions, in commands and expected output alike: `/srv/...` and `/home/me` become folders in
a temporary directory, `127.0.0.1:7070` and `127.0.0.1:7071` free loopback ports, `web-1` (the
server's name in messages) this machine's host name.

Matching, line by line:
- a line that is only `...` matches any number of lines, none included;
- `...` inside a line matches any text, and at its end any continuation;
- every run of digits matches any run of digits, so numbers, times, dates, sizes and ids match
  any value of the same shape (`117.2 KiB` matches `4.5 KiB`, not `117 KiB` or `117.2 MiB`);
- runs of spaces match any run of spaces (columns widen with longer paths); leading and
  trailing spaces and trailing blank lines are ignored;
- everything else is literal: a changed message, a missing or extra line, or another status
  word fails. A command the README shows with no output must print nothing and exit 0.
A line `^C` is the user pressing Ctrl-C: the command (a daemon or server) runs until the lines
before it have been printed, then gets SIGINT like a terminal's Ctrl-C, and the lines after it
must follow.

What the test controls, and why:
- After `fazt-agent init DIR` the test turns off the scaffolded `system` and `disk` checks
  (`enabled = false`) and drops the README's table rows of those two checks: their status is
  this machine's CPU, load and disks (the test machine is busy with other tests), not the
  README's story; `config check`'s count of checks gets those two added back. It also gives the
  control plane a free port.
- The LLM is a scripted Messages API (`fazt_agent.testing.ScriptedLLM`, through the real SDK
  via ANTHROPIC_BASE_URL) that answers as the model does in the README's LLM section.
- An HTML comment `<!-- readme-test: skip (REASON) -->` right before a block leaves it out; the
  reason is required. Keep such marks for what cannot run in a test (installing a system
  service).

The ```toml examples: each goes where its top-level tables belong in a fresh `fazt-agent init`
folder (`[agent]`, `[notify]`, ...: the whole config.toml; `[[checks]]`: a file in pulse/;
`[constraints]`, `[[rules]]`, ...: the policy, policies/default.toml; `[certs]`,
`[[certificates]]`, ...: a file in kernel/) and must pass `fazt-agent config check`, with the
environment variables they name (`${NTFY_TOPIC}`) set. The ```json examples must parse.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import base_env, free_port
from fazt_agent.config import ConfigFile
from fazt_agent.testing import ScriptedLLM, message, text, tool_use

README = Path(__file__).resolve().parent.parent / "README.md"
BIN = Path(sys.executable).parent
MACHINE_CHECKS = ("system", "disk")   # scaffolded by `init`; their status is the test machine's
COMMAND_TIMEOUT = 120.0
CTRL_C = "^C"
DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(\S+)(.*?)-->", re.S)
DIRECTIVES = {"skip"}


# -- the README's blocks ----------------------------------------------------------------------

@dataclass
class Command:
    text: str                 # as bash gets it (heredoc lines included)
    expected: list[str]       # the output lines the README shows
    line: int                 # where the command starts in README.md


@dataclass
class Block:
    lang: str
    line: int                 # the line of the opening fence
    body: list[str]
    directives: dict[str, str] = field(default_factory=dict)   # name -> the text after it

    def commands(self) -> list[Command]:
        """Split a console block into commands and their expected output."""
        commands: list[Command] = []
        lines = iter(enumerate(self.body, start=self.line + 1))
        for number, raw in lines:
            if not raw.startswith("$ "):
                assert commands, f"README.md:{number}: a console block must start with a `$ ` command"
                commands[-1].expected.append(raw)
                continue
            parts = [raw[2:]]
            while parts[-1].endswith("\\"):
                parts.append(next(lines)[1])
            for word in re.findall(r"<<-?\s*['\"]?(\w+)['\"]?", "\n".join(parts)):
                for _, more in lines:
                    parts.append(more)
                    if more.strip() == word:
                        break
                else:
                    raise AssertionError(f"README.md:{number}: heredoc {word} is not closed")
            commands.append(Command("\n".join(parts), [], number))
        return commands


def blocks(text_: str) -> list[Block]:
    """Every fenced block of the README, with the readme-test directives right before it."""
    found: list[Block] = []
    lines = text_.splitlines()
    pending: dict[str, str] = {}
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("<!--"):
            end = i
            while "-->" not in lines[end]:
                end += 1
            for name, rest in DIRECTIVE.findall("\n".join(lines[i:end + 1])):
                assert name in DIRECTIVES, f"README.md:{i + 1}: unknown readme-test directive {name!r}"
                pending[name] = " ".join(rest.split())
            i = end + 1
            continue
        if stripped.startswith("```"):
            lang, start = stripped[3:].strip(), i
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            found.append(Block(lang, start + 1, lines[start + 1:i], pending))
            pending = {}
        elif stripped:
            pending = {}   # a directive applies to the block right after it
        i += 1
    return found


# -- matching ----------------------------------------------------------------------------------

def line_pattern(expected: str) -> re.Pattern[str]:
    """The regular expression one README output line stands for (see the module docstring)."""
    pieces = []
    for piece in expected.strip().split("..."):
        pieces.append("".join(r"\d+" if token[0].isdigit() else r"\s+" if token[0].isspace() else re.escape(token)
                              for token in re.findall(r"\d+|\s+|[^\d\s]+", piece)))
    return re.compile(".*?".join(pieces))   # matched whole: a final `...` takes any continuation


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether the actual lines are what the README shows, `...` lines matching any lines."""
    patterns = [None if e.strip() == "..." else line_pattern(e) for e in expected]
    actual = [a.strip() for a in actual]
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        if (i, j) not in memo:
            if i == len(patterns):
                memo[i, j] = j == len(actual)
            elif patterns[i] is None:
                memo[i, j] = go(i + 1, j) or (j < len(actual) and go(i, j + 1))
            else:
                memo[i, j] = j < len(actual) and bool(patterns[i].fullmatch(actual[j])) and go(i + 1, j + 1)
        return memo[i, j]

    return go(0, 0)


def trim(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def test_the_matching_rules_are_strict_where_the_readme_is_specific() -> None:
    readme = ["check    target   status   message",
              "...",
              "scratch  /srv/s   warning  /srv/s holds 117.2 KiB in 6 files",
              "beat 1: warning in 103 ms",
              "    7 2026-11-22 05:24:02 decision.made  engine {\"a\":1,...",
              "fzt_..."]
    good = ["check  target  status  message", "system  x  ok  cpu 3.1%", "disk / ok",
            "scratch  /srv/s  warning  /srv/s holds 4.5 KiB in 60 files", "beat 12: warning in 7 ms",
            "   12 2026-12-01 04:13:29 decision.made engine {\"a\":1,\"b\":2}", "fzt_eZm4MO1gXnJe49r"]
    assert matches(readme, good)
    assert matches(readme, good[:1] + good[3:])                        # `...` matches no line too
    assert not matches(readme, good[:3] + good[4:])                    # a missing line
    assert not matches(readme, good + ["one more line"])               # an extra line
    assert not matches(readme, [g.replace("warning", "critical") for g in good])   # another status
    assert not matches(readme, [g.replace("4.5 KiB", "4 KiB") for g in good])       # another shape
    assert not matches(readme, [g.replace("4.5 KiB", "4.5 MiB") for g in good])   # another unit
    assert not matches(readme, [g.replace("holds", "has") for g in good])         # another message
    assert not matches(["halt 1: approve; done: freed 150.0 MiB (3 files)"],
                       ["halt 1: approve; ineffective: freed 0 B (0 files)"])


# -- one shell session -------------------------------------------------------------------------

class Hung(AssertionError):
    """A command did not finish: the session cannot go on."""


class Session:
    """A bash process that runs the README's commands one at a time, each with its own output file."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env = home, env
        self.outputs = home.parent / "outputs"
        self.outputs.mkdir()
        self.errors = (home.parent / "bash.stderr").open("w")
        self.bash = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errors, cwd=home, env=env,
                                     text=True, bufsize=1)
        self.count = 0
        self.cwd = home

    def close(self) -> None:
        if self.bash.poll() is None:
            self.bash.stdin.close()  # type: ignore[union-attr]
            try:
                self.bash.wait(10)
            except subprocess.TimeoutExpired:
                self.bash.kill()
        self.errors.close()

    def _send(self, script: str) -> None:
        assert self.bash.stdin is not None
        self.bash.stdin.write(script + "\n")
        self.bash.stdin.flush()

    def _reply(self, tag: str, timeout: float) -> list[str]:
        """The words after `tag` on the next line bash prints to the pipe."""
        assert self.bash.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.bash.stdout], [], [], 1.0)
            if ready:
                line = self.bash.stdout.readline()
                if not line:
                    raise AssertionError(f"bash exited: {Path(self.errors.name).read_text()}")
                if line.startswith(tag + " "):
                    return line[len(tag) + 1:].rstrip("\n").split(" ", 1)
        raise Hung(f"it did not finish within {timeout:.0f} s (one that runs until stopped needs a `^C` "
                   "line in the README)")

    def run(self, command: str) -> tuple[list[str], int]:
        """Run one command to its end: its output lines and exit status."""
        self.count += 1
        out, tag = self.outputs / f"{self.count}.out", f"__done_{self.count}__"
        self._send(f"{{ {command}\n}} </dev/null >{out} 2>&1\necho {tag} $? \"$PWD\"")
        status, cwd = self._reply(tag, COMMAND_TIMEOUT)
        self.cwd = Path(cwd)
        return out.read_text().splitlines(), int(status)

    def last_output(self) -> list[str]:
        out = self.outputs / f"{self.count}.out"
        return out.read_text().splitlines() if out.exists() else []

    def interrupt(self, command: str, before: list[str]) -> tuple[list[str], int]:
        """Run a command that runs until stopped: wait for the `before` lines, then Ctrl-C it.

        It runs in the shell's folder and environment, in a process group of its own that gets
        SIGINT, as a terminal's foreground job does on Ctrl-C (a background job of a shell
        without job control would ignore SIGINT)."""
        self.count += 1
        out, tag = self.outputs / f"{self.count}.out", f"__env_{self.count}__"
        dump = self.outputs / f"{self.count}.env"
        self._send(f"env -0 >{dump}\necho {tag} 0 \"$PWD\"")
        self.cwd = Path(self._reply(tag, 30)[1])
        env = dict(item.split("=", 1) for item in dump.read_text().split("\0") if "=" in item)
        with out.open("w") as sink:
            proc = subprocess.Popen(["bash", "--noprofile", "--norc", "-c", command], cwd=self.cwd, env=env,
                                    stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + COMMAND_TIMEOUT
            while not matches(before, trim(out.read_text().splitlines())):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"`{command}` did not print the lines before ^C "
                                         f"({'it exited' if proc.poll() is not None else 'timeout'}):\n"
                                         + out.read_text())
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)
            status = proc.wait(COMMAND_TIMEOUT)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return out.read_text().splitlines(), status


@dataclass
class Places:
    """The README's example paths and ports, and what they are in this test run."""

    root: Path
    api_port: int
    mcp_port: int
    host: str = field(default_factory=socket.gethostname)

    def apply(self, value: str) -> str:
        value = re.sub(r"(?<![\w.-])/srv/", f"{self.root}/srv/", value)
        value = re.sub(r"(?<![\w.-])/home/me(?![\w-])", f"{self.root}/home/me", value)
        value = value.replace("127.0.0.1:7070", f"127.0.0.1:{self.api_port}")
        value = value.replace("127.0.0.1:7071", f"127.0.0.1:{self.mcp_port}")
        return re.sub(r"(?<![\w-])web-1(?![\w-])", self.host, value)


def after_init(folder: Path, places: Places) -> None:
    """Turn off the machine checks and give the control plane a free port (module docstring)."""
    pulse = folder / "pulse" / "system.toml"
    source = pulse.read_text()
    for kind in MACHINE_CHECKS:
        source, n = re.subn(rf'(?m)^kind = "{kind}"$', f'kind = "{kind}"\nenabled = false', source)
        assert n == 1, f"the scaffolded {pulse} has no `{kind}` check any more: update tests/test_readme.py"
    pulse.write_text(source)
    config = folder / "config.toml"
    source, n = re.subn(r'(?m)^listen = "127\.0\.0\.1:7070"', f'listen = "127.0.0.1:{places.api_port}"',
                        config.read_text())
    assert n == 1, f"the scaffolded {config} does not listen on 127.0.0.1:7070 any more"
    config.write_text(source)


def machine_count(line: str) -> str:
    """`config check`'s count as the README's reader sees it: the machine checks turned off by
    `after_init` are not counted by the command, so they are added back here."""
    m = re.fullmatch(r"(\s*)(\d+) checks? in (.*)", line)
    if m is None:
        return line
    n = int(m.group(2)) + len(MACHINE_CHECKS)
    return f"{m.group(1)}{n} check{'' if n == 1 else 's'} in {m.group(3)}"


def machine_row(line: str) -> bool:
    """A table row of a machine check (`system` or `disk` first): not expected (module docstring)."""
    return line.split(" ", 1)[0] in MACHINE_CHECKS and "  " in line


# -- the scripted model of the LLM section ---------------------------------------------------

def scripted_model(places: Places) -> ScriptedLLM:
    """The model as the README's LLM section shows it: it looks at the folder, then explains why a
    cleanup would not help; asked a question, it answers in one sentence."""
    scratch = places.apply("/srv/scratch")

    def reply(request: dict[str, Any]) -> dict[str, Any]:
        tools = [t["name"] for t in request.get("tools", [])]
        if "notify_only" in tools:
            if len(request["messages"]) == 1:
                return message(tool_use("largest_paths", {"root": scratch, "top": 10}))
            return message(tool_use("notify_only", {
                "reason": f"Six new uploads fill {scratch}; none is 7 days old, so a cleanup frees nothing."}))
        if tools:
            return message(text(f"{scratch} went from 0 B to 117.2 KiB (6 files) since the cleanup at "
                                f"{time.strftime('%H:%M')}; none is old enough for the 7-day cleanup."))
        return message(text("All is well."))

    return ScriptedLLM(default=reply)


# -- the tests ---------------------------------------------------------------------------------

@pytest.fixture
def session() -> Iterator[tuple[Session, Places]]:
    assert (BIN / "fazt-agent").exists(), f"no fazt-agent in {BIN}: install the project (make install)"
    root = Path(tempfile.mkdtemp(prefix="readme-", dir="/tmp"))  # short: long paths widen the tables
    places = Places(root, free_port(), free_port())
    home = root / "home" / "me"
    home.mkdir(parents=True)
    with scripted_model(places) as llm:
        env = base_env(PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", HOME=str(home),
                       PYTHONUNBUFFERED="1", COLUMNS="250", LANG="C.UTF-8", ANTHROPIC_BASE_URL=llm.url)
        for name in ("LC_ALL", "FORCE_COLOR", "NO_COLOR", "TERM"):
            env.pop(name, None)
        shell = Session(home, env)
        try:
            yield shell, places
        finally:
            shell.close()
            for pid in _leftovers(root):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(root, ignore_errors=True)


def _leftovers(root: Path) -> list[int]:
    """Processes still running in the test's folders (a daemon a failed test left behind)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(root) in (proc / "cmdline").read_bytes().decode(errors="replace") or \
                        str(root) in os.readlink(proc / "cwd"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return [p for p in pids if p != os.getpid()]


def test_every_console_example_runs_and_prints_what_the_readme_shows(session: tuple[Session, Places]) -> None:
    shell, places = session
    consoles = [b for b in blocks(README.read_text()) if b.lang == "console"]
    assert consoles, "README.md has no console block"
    ran, wrong = 0, []   # every mismatch is reported (later ones may follow from the first)
    for block in consoles:
        if "skip" in block.directives:
            assert block.directives["skip"].startswith("(") and len(block.directives["skip"]) > 10, \
                f"README.md:{block.line}: a skipped block needs its reason: <!-- readme-test: skip (WHY) -->"
            continue
        for command in block.commands():
            text_ = places.apply(command.text)
            expected = trim([places.apply(e) for e in command.expected if not machine_row(e)])
            if CTRL_C in [e.strip() for e in expected]:
                cut = [e.strip() for e in expected].index(CTRL_C)
                actual, _ = shell.interrupt(text_, expected[:cut])
                expected = expected[:cut] + expected[cut + 1:]
            else:
                try:
                    actual, status = shell.run(text_)
                except Hung as e:
                    wrong.append(f"README.md:{command.line}: `{command.text.splitlines()[0]}`: {e}; printed\n"
                                 + "\n".join(f"    {a}" for a in shell.last_output()))
                    pytest.fail(f"{len(wrong)} README example(s) differ:\n\n" + "\n\n".join(wrong))
                if not expected and status != 0:
                    wrong.append(f"README.md:{command.line}: `{command.text.splitlines()[0]}` exited with "
                                 f"{status} (the README shows it succeed silently)")
            actual = trim([machine_count(a) for a in actual])
            if not matches(expected, actual):
                wrong.append(f"README.md:{command.line}: `{command.text.splitlines()[0]}` printed\n"
                             + "\n".join(f"    {a}" for a in actual) + "\nbut the README shows (after substitutions)\n"
                             + "\n".join(f"    {e}" for e in expected))
            init = re.fullmatch(r"fazt-agent init (\S+)(\s+#.*)?", text_.strip())
            if init:
                after_init(shell.cwd / init.group(1), places)
            ran += 1
    assert not wrong, f"{len(wrong)} README example(s) differ:\n\n" + "\n\n".join(wrong)
    shown = sum(line.startswith("$ ") for b in consoles if "skip" not in b.directives for line in b.body)
    assert ran == shown > 30, f"{ran} commands ran of the {shown} `$ ` lines (a heredoc swallowed some?)"


# -- the configuration examples ----------------------------------------------------------------

CONFIG_TABLES = set(ConfigFile.model_fields)   # every top-level table of config.toml
PLACES = {"checks": "pulse", "constraints": "policies", "schedule": "policies", "defaults": "policies",
          "rules": "policies", "cleanup": "kernel", "service": "kernel", "certs": "kernel",
          "certificates": "kernel", "commands": "kernel"}


def place_of(data: dict[str, Any], line: int) -> str:
    """`config.toml` or the definition folder a TOML example belongs in, from its top-level keys."""
    places = {"config.toml" if key in CONFIG_TABLES else PLACES.get(key, f"? ({key})") for key in data}
    assert len(places) == 1, f"README.md:{line}: a toml example mixes places: {sorted(places)}"
    return places.pop()


def test_every_toml_example_passes_config_check_in_its_place(tmp_path: Path) -> None:
    examples = [b for b in blocks(README.read_text()) if b.lang == "toml"]
    assert len(examples) >= 4
    for n, block in enumerate(examples):
        source = "\n".join(block.body) + "\n"
        try:
            data = tomllib.loads(source)
        except tomllib.TOMLDecodeError as e:
            pytest.fail(f"README.md:{block.line}: the toml example does not parse: {e}")
        place = place_of(data, block.line)
        ops = tmp_path / f"ops{n}"
        made = subprocess.run([str(BIN / "fazt-agent"), "init", str(ops)], capture_output=True, text=True,
                              env=base_env())
        assert made.returncode == 0, made.stderr
        if place == "config.toml":
            target = ops / "config.toml"              # the example is the whole file
        elif place == "policies":
            target = ops / "policies" / "default.toml"   # a policy's [constraints] live in one file
        else:
            target = ops / place / "readme.toml"
        target.write_text(source)
        checked = subprocess.run([str(BIN / "fazt-agent"), "--config", str(ops / "config.toml"), "config", "check"],
                                 capture_output=True, text=True,
                                 env=base_env(**{name: "readme-test" for name in re.findall(r"\$\{(\w+)\}", source)}))
        assert checked.returncode == 0 and ": ok" in checked.stdout, \
            f"README.md:{block.line}: the toml example fails `config check` as {target.relative_to(ops)}:\n" \
            f"{checked.stdout}{checked.stderr}"


def test_every_json_example_parses() -> None:
    for block in blocks(README.read_text()):
        if block.lang == "json":
            try:
                json.loads("\n".join(block.body))
            except json.JSONDecodeError as e:
                pytest.fail(f"README.md:{block.line}: the json example does not parse: {e}")
