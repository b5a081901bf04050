"""The README as a stranger reads it: every API example runs as written, in document
order, on one fresh service started as a user starts it, and answers what the README
shows; every link stays inside the repository and resolves.

How to add an example (the test finds it by itself)
---------------------------------------------------

Put `<!-- example -->` on the line before a fenced `sh` block, and follow that block
with the answer it prints, in a fenced `json` (or `text`) block, nothing but blank lines
between the three:

    <!-- example -->
    ```sh
    curl -s "http://127.0.0.1:${PORT:-8000}/api/v1/customers/cus-1" \\
      -H 'Authorization: Bearer dev-key-change-me'
    ```
    ```json
    {"status":404,"error":"Not Found","code":"customer_not_found"}
    ```

- `<!-- example -->` runs against the service: `customers-registry serve`, installed
  from this checkout into a fresh venv (tests/installed.py), started once for all the
  examples with nothing in its environment but PATH, HOME and `API_KEY=dev-key-change-me`
  (what `make run` sets; on the PostgreSQL run, `DATABASE_URL` too). The command runs
  with `PORT` set to that service's port, so write the address as
  `http://127.0.0.1:${PORT:-8000}` and the key as `dev-key-change-me`.
- curl reads `[` and `]` in a URL as a pattern: a URL with `countries[]=...` needs
  `curl -g` (or `countries%5B%5D=...`).
- `<!-- example: double -->` runs against the double: one `customers-double` (the
  installed command, its default key `test-key`), started once for all the double's
  examples; the command runs with `LAGO_URL` (its base URL) and `LAGO_API_KEY=test-key`
  set, as the README's shell recipe exports them.

Each block runs with `bash -euo pipefail -c`, in the order of the document, after every
example above it, so it sees what they created. By the end of the API section's
read-one example, the service holds `cus-1` (Gavin Belson, email `gavin@hooli.test`,
no country) and `team/42 #eu` (Hooli Europe, Dublin, IE), created in that order; the
delete example then removes `cus-1`. An example that writes (its command sends data with
`-d`, `--data...`, `--json` or `-F`) starts in a later second than the last such
example ended, as a person typing does, so customers created by successive examples
sort newest first as the README shows them.

How an answer is compared
-------------------------

A `text` answer must equal what the command prints (trailing blank space aside). A
`json` answer is parsed and compared with the parsed output, exactly (same keys, lists in
the same order), except the values of the keys in VARYING, wherever they appear: those
differ from run to run, so a string there matches a real value of that key's shape (a
`null` shown must be `null`). Two rules keep that honest:

- one value shown stands for one real value: where the README shows the same `lago_id`
  (or `created_at`, ...) twice, the two real answers must hold the same value, and, for
  the keys marked unique, different values shown must be different real values;
- a varying value shown in an earlier answer and written into a later command (a cursor
  copied from one page into the next request) is replaced, in that command, by the real
  value it stood for, as a reader copying from their own terminal would.

Add a key to VARYING only for a value the service makes up (an id, a time, a cursor).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import BACKEND
from tests.support import REPO

README = REPO / "README.md"
SERVICE_KEY = "dev-key-change-me"  # make run's API_KEY, which the examples use
DOUBLE_KEY = "test-key"  # customers-double's default key

# The keys whose values the service makes up: (the shape of a real value, whether two
# different values shown must be two different real values).
VARYING: dict[str, tuple[str, bool]] = {
    "lago_id": (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", True),
    "created_at": (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", False),
    "request_id": (r"[0-9a-f]{32}", True),  # one the service made (uuid4 hex)
    "id": (r"[0-9a-f]{12}", True),  # a fault of the double
    "next_cursor": (r"[A-Za-z0-9_=.~-]{1,512}", False),  # opaque, URL-safe
}

EXAMPLE = re.compile(
    r"<!-- example(?::\s*(?P<target>[a-z]+))? -->\n"
    r"```sh\n(?P<command>.*?)^```[ \t]*\n\s*"
    r"```(?P<kind>json|text)\n(?P<answer>.*?)^```",
    re.DOTALL | re.MULTILINE,
)
WRITES = re.compile(r"(?:^|\s)(?:-d|--data[\w-]*|--json|-F|--form)(?:\s|=|$)")


@dataclass
class Example:
    line: int
    target: str  # "service" or "double"
    command: str
    kind: str  # "json" or "text"
    answer: str

    def __str__(self) -> str:
        return f"README.md line {self.line} ({self.target})"


def examples(markdown: str) -> list[Example]:
    """The marked examples, in document order. A marker the pattern cannot read fails,
    so that a mistyped example is never silently left out."""
    found = []
    for match in EXAMPLE.finditer(markdown):
        target = match["target"] or "service"
        assert target in ("service", "double"), f"unknown example target {target!r}"
        line = markdown.count("\n", 0, match.start()) + 1
        found.append(Example(line, target, match["command"], match["kind"], match["answer"]))
    markers = markdown.count("<!-- example")
    assert len(found) == markers, (
        f"{markers} example markers, {len(found)} readable: each needs a fenced sh block "
        "right after it and the json or text block of its answer right after that"
    )
    return found


class Answers:
    """Compares real answers with the README's, under the rules of this module's
    docstring, remembering what each varying value shown stood for."""

    def __init__(self) -> None:
        self.real_of: dict[tuple[str, str], str] = {}  # (key, value shown) -> real value

    def substitute(self, command: str) -> str:
        for (_, shown), real in self.real_of.items():
            if len(shown) >= 8:  # ids, times, cursors; never a short common word
                command = command.replace(shown, real)
        return command

    def check(self, shown: Any, real: Any, where: str = "answer") -> None:
        if isinstance(shown, dict):
            assert isinstance(real, dict), f"{where}: an object shown, {real!r} answered"
            assert sorted(shown) == sorted(real), f"{where}: keys {sorted(real)} answered"
            for key in shown:
                if key in VARYING and isinstance(shown[key], str):
                    self.bind(key, shown[key], real[key], f"{where}.{key}")
                else:
                    self.check(shown[key], real[key], f"{where}.{key}")
        elif isinstance(shown, list):
            assert isinstance(real, list) and len(real) == len(shown), (
                f"{where}: {len(shown)} items shown, {real!r} answered"
            )
            for index, (one_shown, one_real) in enumerate(zip(shown, real, strict=True)):
                self.check(one_shown, one_real, f"{where}[{index}]")
        else:
            assert shown == real and type(shown) is type(real), (
                f"{where}: {shown!r} shown, {real!r} answered"
            )

    def bind(self, key: str, shown: str, real: Any, where: str) -> None:
        shape, unique = VARYING[key]
        assert isinstance(real, str) and re.fullmatch(shape, real), (
            f"{where}: {real!r} answered, not of the shape of a {key}"
        )
        earlier = self.real_of.setdefault((key, shown), real)
        assert earlier == real, f"{where}: {shown!r} stood for {earlier!r}, now {real!r}"
        if unique:
            others = [s for (k, s), r in self.real_of.items() if k == key and r == real]
            assert others == [shown], f"{where}: {others} shown, one real {key} {real!r}"


def run_example(example: Example, answers: Answers, env: dict[str, str], cwd: Path) -> None:
    command = answers.substitute(example.command)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    printed = f"{example}:\n{command}\nprinted:\n{result.stdout}{result.stderr}"
    assert result.returncode == 0, printed
    if example.kind == "text":
        lines = [line.rstrip() for line in result.stdout.strip().splitlines()]
        assert lines == [line.rstrip() for line in example.answer.strip().splitlines()], printed
        return
    shown = json.loads(example.answer)  # a README answer that is not JSON fails here
    try:
        real = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"not JSON: {printed}") from None
    try:
        answers.check(shown, real)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{printed}") from None


def wait_for_a_new_second(last: float | None) -> None:
    """Returns when the wall clock's second is later than that of `last`."""
    if last is not None:
        while int(time.time()) <= int(last):
            time.sleep(int(last) + 1 - time.time() + 0.01)


def run_in_order(found: list[Example], targets: dict[str, dict[str, str]], cwd: Path) -> int:
    """Runs the examples in order, each with the environment of its target. Returns how
    many ran."""
    answers, last_write = Answers(), None
    for example in found:
        writes = WRITES.search(example.command)
        if writes:
            wait_for_a_new_second(last_write)
        run_example(example, answers, targets[example.target], cwd)
        if writes:  # its customers were created before this instant, in its second or earlier
            last_write = time.time()
    return len(found)


@pytest.fixture
def double_url(installed, tmp_path):
    """A `customers-double` started from the installed venv, with a user's bare
    environment; yields its base URL (the first line it prints)."""
    env = installed.env(tmp_path / "double-home")
    process = subprocess.Popen(
        [str(installed.bin / "customers-double")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), process.stderr.read()
        yield url
    finally:
        process.terminate()
        assert process.wait(15) == 0
        process.stdout.close()
        process.stderr.close()


def example_env(installed, home: Path, **settings: str) -> dict[str, str]:
    """The shell a reader types the examples into: PATH (the venv's bin first), HOME."""
    return {**installed.env(home), **settings}


def test_every_api_example_runs_in_order_on_a_fresh_service(installed, tmp_path, request):
    found = examples(README.read_text())
    assert [e for e in found if e.target == "service"], "the API section has no examples"
    settings = {"API_KEY": SERVICE_KEY}
    if BACKEND == "postgresql":
        settings["DATABASE_URL"] = request.getfixturevalue("database_url")
    env = installed.env(tmp_path / "home", **settings)
    with installed.serve(tmp_path, env) as served:
        targets = {"service": example_env(installed, tmp_path / "shell", PORT=str(served.port))}
        if any(e.target == "double" for e in found):
            url = request.getfixturevalue("double_url")
            targets["double"] = example_env(
                installed, tmp_path / "shell", LAGO_URL=url, LAGO_API_KEY=DOUBLE_KEY
            )
        run_in_order(found, targets, tmp_path)
        log = served.log_text()
    assert SERVICE_KEY not in log


def test_double_examples_run_against_a_fresh_double(installed, double_url, tmp_path):
    """The double's side of the format, shown by an example of the shape the README's
    double sections use (the README may have none yet)."""
    markdown = (
        "<!-- example: double -->\n```sh\n"
        'curl -s "$LAGO_URL/_double/faults" -H "Content-Type: application/json" \\\n'
        '  -d \'{"fault": {"status": 503, "times": 2}}\' > /dev/null\n'
        'curl -s "$LAGO_URL/_double/faults"\n```\n\n```json\n'
        '{"faults":[{"id":"3f2a9c1d0b7e","method":null,"path":null,"status":503,'
        '"headers":{},"delay_ms":0,"action":null,"times":2,"remaining":2}]}\n```\n'
    )
    env = example_env(installed, tmp_path / "shell", LAGO_URL=double_url, LAGO_API_KEY="test-key")
    assert run_in_order(examples(markdown), {"double": env}, tmp_path) == 1


def test_answers_match_exactly_but_for_the_varying_keys():
    made_up = "0b8e1d7c-2f4a-4c1e-9a3b-5d6e7f8a9b0c"
    other = "1c9f2e8d-3a5b-4d2f-8b4c-6e7f8a9b0c1d"
    shown = {"customer": {"lago_id": made_up, "name": "A", "country": None}}
    real = {"customer": {"lago_id": other, "name": "A", "country": None}}
    answers = Answers()
    answers.check(shown, real)  # a lago_id matches by shape
    answers.check(shown, real)  # the same one shown again: the same real one
    failures = [
        {"customer": {"lago_id": "not-a-uuid", "name": "A", "country": None}},  # shape
        {"customer": {"lago_id": made_up, "name": "A", "country": None}},  # not the same
        {"customer": {"lago_id": other, "name": "B", "country": None}},  # a fixed value
        {"customer": {"lago_id": other, "name": "A", "country": None, "x": 1}},  # a key more
        {"customer": {"lago_id": other, "name": "A", "country": ""}},  # null is exact
    ]
    for wrong in failures:
        with pytest.raises(AssertionError):
            answers.check(shown, wrong)
    with pytest.raises(AssertionError):  # two ids shown, one real id
        answers.check({"lago_id": "ffffffff-2f4a-4c1e-9a3b-5d6e7f8a9b0c"}, {"lago_id": other})
    with pytest.raises(AssertionError):  # 1 is not 1.0, nor True
        Answers().check({"n": 1}, {"n": True})
    assert answers.substitute(f"curl .../{made_up}") == f"curl .../{other}"


def test_a_mistyped_example_marker_fails_rather_than_being_skipped():
    markdown = "<!-- example -->\n```sh\ncurl -s x\n```\nThe answer:\n```json\n{}\n```\n"
    with pytest.raises(AssertionError, match="1 example markers, 0 readable"):
        examples(markdown)


# Links: [text](target) and ![alt](target), outside code.
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
# A path that starts by climbing out of the repository (`../shared/...`), in prose or code;
# not the `..` segments inside a path (`a/../../b`), which the nginx section shows.
ABOVE = re.compile(r"(?<![\w/.])\.\./(?!\.\./)[\w.-]+")


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation but `-` and `_`
    dropped, spaces as `-`, `-1`, `-2`, ... after repeats."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", markdown), re.MULTILINE):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def links(markdown: str) -> list[str]:
    prose = CODE_SPAN.sub("", FENCE.sub("", markdown))
    return LINK.findall(prose)


@pytest.mark.parametrize("document", ["README.md", "CHANGELOG.md"])
def test_every_link_stays_in_the_repository_and_resolves(document):
    path = REPO / document
    markdown = path.read_text()
    own_anchors = anchors(markdown)
    targets = links(markdown)
    assert document != "README.md" or len(targets) > 10  # the parser finds the README's
    broken = []
    for target in targets:
        parts = urlsplit(target)
        if parts.scheme in ("http", "https", "mailto"):
            continue
        assert not parts.scheme and not parts.netloc, f"{target}: not a file of the repository"
        if parts.path:
            resolved = (path.parent / unquote(parts.path)).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                broken.append(target)
            elif parts.fragment and resolved.suffix == ".md":
                if parts.fragment not in anchors(resolved.read_text()):
                    broken.append(target)
        elif parts.fragment not in own_anchors:
            broken.append(target)
    assert broken == [], f"{document}: links outside the repository or to nothing: {broken}"
    assert ABOVE.findall(markdown) == [], f"{document} names a path above the repository"


def test_the_link_checker_sees_what_leaves_the_repository():
    markdown = "# Top\n\n## A `b`: c\n\n[x](#a-b-c) [y](../shared/CONTRACT.md) [z](#nope)\n"
    assert links(markdown) == ["#a-b-c", "../shared/CONTRACT.md", "#nope"]
    assert anchors(markdown + "## Top\n") == {"top", "a-b-c", "top-1"}
    assert ABOVE.findall("is `../shared/CONTRACT.md`; ids like `../../../../etc`, `a/../b`") == [
        "../shared"
    ]
