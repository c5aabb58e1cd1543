# -*- test-case-name: tests.test_importer -*-
"""
Moving a distro-tracker site: its subscribers, imported without asking
anyone to subscribe again.

distro-tracker's C{tracker_dump_subscribers} prints one of three formats,
recognised here by their shape:

  - C{--json}: one JSON object, package -> list of emails;
  - the default: one line per package, C{pkg => [ a@x b@y ]};
  - C{--udd-format}: one line per package, C{pkg<TAB>a@x, b@y}.

L{parse_dump} reads a file (plain, gzip, xz or bzip2) into a mapping;
L{import_dump} subscribes every address (active, no confirmation) in
transactions of L{BATCH_PACKAGES} packages. Running it twice creates nothing
new. Lines that cannot be read, bad package names and bad addresses are
skipped, counted and reported, never fatal.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from trackermail.cli_support import CommandError, Progress, run_with_store
from trackermail.errors import InvalidValue, TrackerError
from trackermail.store.sql import Exec, Many, Rows
from trackermail.validation import check_package_name, normalize_email

log = Logger()

BATCH_PACKAGES = 1000
# Rows per "IN (...)" lookup: far below SQLite's and PostgreSQL's limits.
_IN_CHUNK = 500
# Warnings printed one by one by the CLI before they are only counted.
MAX_WARNINGS_SHOWN = 20

_PLAIN_RE = re.compile(r"^(?P<package>\S+)\s*=>\s*\[(?P<emails>[^\[\]]*)\]\s*$")


class DumpError(TrackerError):
    """
    The dump cannot be read at all (missing file, broken JSON, unknown
    format); the message says where.
    """


@dataclass
class Dump:
    """
    What a dump file holds.

    @ivar format: C{"json"}, C{"plain"} or C{"udd"}.
    @ivar subscriptions: package -> emails, in the file's order, each
        package once (repeated lines are merged).
    @ivar problems: C{(line number, reason)} of every line skipped; line 0
        for problems of the JSON format, which has no useful line numbers.
    """

    format: str
    subscriptions: dict[str, list[str]] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)


class ImportResult(NamedTuple):
    packages: int
    subscriptions_created: int
    already_present: int
    invalid: int


def _read_text(path: str) -> str:
    from trackermail.sources import open_index

    try:
        stream = open_index(path)
    except TrackerError as e:
        raise DumpError(str(e))
    try:
        data = stream.read()
    except (OSError, EOFError) as e:
        raise DumpError(f"{path}: cannot read: {e}")
    finally:
        stream.close()
    # Bad bytes become U+FFFD, which no valid address or package name
    # contains: such entries are skipped as invalid, not fatal.
    text = data.decode("utf-8", errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def detect_format(text: str) -> str | None:
    """
    C{"json"}, C{"plain"} or C{"udd"} from the first non-blank line, or
    None when it looks like none of them (an empty dump is plain).
    """
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("{"):
            return "json"
        if "=>" in stripped:
            return "plain"
        if "\t" in line:
            return "udd"
        return None
    return "plain"


def _add(result: dict[str, list[str]], package: str, emails: Iterable[str]) -> None:
    target = result.setdefault(package, [])
    target.extend(emails)


def _parse_json(text: str, dump: Dump) -> None:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise DumpError(f"not valid JSON: {e}")
    if not isinstance(data, dict):
        raise DumpError("the JSON dump is not an object of package -> emails")
    for package, emails in data.items():
        if isinstance(emails, str):
            emails = [emails]
        if not isinstance(emails, list):
            dump.problems.append((0, f'package "{package}": expected a list of emails'))
            continue
        # Non-strings are kept: the import counts them as invalid addresses.
        _add(dump.subscriptions, str(package), [e if isinstance(e, str) else repr(e)
                                                for e in emails])


def _parse_lines(text: str, dump: Dump) -> None:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if dump.format == "plain":
            match = _PLAIN_RE.match(line.strip())
            if match is None:
                dump.problems.append((number, "expected 'PACKAGE => [ EMAIL ... ]'"))
                continue
            _add(dump.subscriptions, match["package"], match["emails"].split())
        else:
            package, tab, emails = line.partition("\t")
            package = package.strip()
            if not tab or not package or " " in package:
                dump.problems.append((number, "expected 'PACKAGE<TAB>EMAIL, EMAIL ...'"))
                continue
            _add(dump.subscriptions, package,
                 [e.strip() for e in emails.split(",") if e.strip()])


def read_dump(path: str) -> Dump:
    """
    Read a dump file of any of the three formats.

    @raise DumpError: the file cannot be read, is broken JSON, or is in no
        known format.
    """
    text = _read_text(path)
    fmt = detect_format(text)
    if fmt is None:
        raise DumpError(
            f"{path}: not a distro-tracker subscriber dump (expected JSON, "
            "'PACKAGE => [ EMAIL ... ]' lines or 'PACKAGE<TAB>EMAIL, ...' lines)"
        )
    dump = Dump(fmt)
    try:
        if fmt == "json":
            _parse_json(text, dump)
        else:
            _parse_lines(text, dump)
    except DumpError as e:
        raise DumpError(f"{path}: {e}")
    return dump


def parse_dump(path: str, warn: Callable[[str], None] | None = None
               ) -> dict[str, list[str]]:
    """
    Package -> emails from a distro-tracker subscriber dump in any of its
    formats. Lines that cannot be read are skipped; each is passed to
    C{warn} (and logged) as C{"PATH:LINE: reason"}.
    """
    dump = read_dump(path)
    for number, reason in dump.problems:
        message = f"{path}:{number}: {reason}" if number else f"{path}: {reason}"
        log.warn("import: skipped {where}: {reason}", where=f"{path}:{number}",
                 reason=reason)
        if warn is not None:
            warn(message)
    return dump.subscriptions


# ---------------------------------------------------------------------------
# Import


def _clean(mapping: Mapping[str, Sequence[str]], warn) -> tuple[dict, int]:
    """
    Valid package -> {email_lower: email}; and the count of what was
    skipped (a bad package name counts once, whatever its emails).
    """
    clean: dict[str, dict[str, str]] = {}
    invalid = 0
    for package, emails in mapping.items():
        if not emails:
            # distro-tracker lists every package name, most with nobody.
            continue
        try:
            check_package_name(package)
        except InvalidValue as e:
            invalid += 1
            warn(f"package skipped: {e}")
            continue
        good = clean.setdefault(package, {})
        for raw in emails:
            try:
                address = normalize_email(raw)
            except InvalidValue as e:
                invalid += 1
                warn(f"{package}: address skipped: {e}")
                continue
            good.setdefault(address.lower(), address)
    return {p: e for p, e in clean.items() if e}, invalid


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start: start + size]


def _ids(table: str, column: str, keys: Sequence[str]):
    found: dict[str, int] = {}
    for chunk in _chunks(keys, _IN_CHUNK):
        rows = yield Rows(
            f"SELECT {column}, id FROM {table} WHERE {column} IN "
            f"({','.join('?' * len(chunk))})",
            list(chunk),
        )
        found.update({key: ident for key, ident in rows})
    return found


def import_batch(batch: Mapping[str, Mapping[str, str]], now: float):
    """
    Store program: subscribe every C{email_lower -> email} of each package
    of C{batch} (already validated), as active subscriptions. Fires with
    C{(created, already_present)}. A handful of statements per batch.
    """
    packages = sorted(batch)
    emails: dict[str, str] = {}
    for per_package in batch.values():
        for lower, address in per_package.items():
            emails.setdefault(lower, address)
    lowers = sorted(emails)
    yield Many(
        "INSERT INTO packages (name, kind) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        [(name, "other") for name in packages],
    )
    yield Many(
        "INSERT INTO emails (email, email_lower) VALUES (?, ?) "
        "ON CONFLICT (email_lower) DO NOTHING",
        [(emails[lower], lower) for lower in lowers],
    )
    package_ids = yield from _ids("packages", "name", packages)
    email_ids = yield from _ids("emails", "email_lower", lowers)
    existing: dict[tuple[int, int], tuple[int, bool]] = {}
    for chunk in _chunks(sorted(package_ids.values()), _IN_CHUNK):
        rows = yield Rows(
            "SELECT email_id, package_id, id, active FROM subscriptions "
            f"WHERE package_id IN ({','.join('?' * len(chunk))})",
            list(chunk),
        )
        for eid, pid, sid, active in rows:
            existing[(eid, pid)] = (sid, bool(active))
    new_rows = []
    reactivate = []
    already = 0
    for package in packages:
        pid = package_ids[package]
        for lower in sorted(batch[package]):
            eid = email_ids[lower]
            found = existing.get((eid, pid))
            if found is None:
                new_rows.append((eid, pid, True, now))
            elif found[1]:
                already += 1
            else:
                reactivate.append(found[0])
    yield Many(
        "INSERT INTO subscriptions (email_id, package_id, active, created) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (email_id, package_id) DO NOTHING",
        new_rows,
    )
    for chunk in _chunks(sorted(reactivate), _IN_CHUNK):
        yield Exec(
            "UPDATE subscriptions SET active = ? "
            f"WHERE id IN ({','.join('?' * len(chunk))})",
            [True, *chunk],
        )
    return len(new_rows) + len(reactivate), already


def import_dump(store, mapping: Mapping[str, Sequence[str]],
                progress: Callable[[int], None] | None = None,
                warn: Callable[[str], None] | None = None,
                batch_size: int = BATCH_PACKAGES,
                now: float | None = None) -> Deferred:
    """
    Subscribe every address of C{mapping} (package -> emails) to its
    package: active, without confirmation, unknown packages created as
    names. One transaction per C{batch_size} packages; C{progress(n)} is
    called after each with the number of entries of C{mapping} done
    (skipped ones included), ending with C{len(mapping)}. Invalid package
    names and addresses are skipped and passed to C{warn}.

    Idempotent: a second run of the same mapping creates nothing. A
    subscription waiting for confirmation is made active (and counted as
    created).

    @return: a Deferred firing with L{ImportResult} C{(packages,
        subscriptions_created, already_present, invalid)}, where C{packages}
        counts the valid packages with at least one valid address.
    """

    def _warn(message: str) -> None:
        log.warn("import: {message}", message=message)
        if warn is not None:
            warn(message)

    async def run() -> ImportResult:
        clean, invalid = _clean(mapping, _warn)
        when = time.time() if now is None else now
        names = list(clean)
        # Progress counts entries of the input mapping (skipped ones too),
        # so that a bar sized to the dump ends at its end.
        position = {name: i + 1 for i, name in enumerate(mapping)}
        created = already = 0
        for chunk in _chunks(names, max(1, batch_size)):
            made, present = await store.run(import_batch,
                                            {name: clean[name] for name in chunk}, when)
            created += made
            already += present
            if progress is not None:
                progress(position[chunk[-1]])
        if progress is not None and (not names or position[names[-1]] < len(mapping)):
            progress(len(mapping))
        log.info("import: {packages} packages, {created} subscriptions created, "
                 "{already} already present, {invalid} invalid entries skipped",
                 packages=len(names), created=created, already=already, invalid=invalid)
        return ImportResult(len(names), created, already, invalid)

    return Deferred.fromCoroutine(run())


# ---------------------------------------------------------------------------
# The admin command


def configure_parser(parser) -> None:
    """Arguments of C{trackermail import-distro-tracker}."""
    parser.add_argument("file", help="the output of tracker_dump_subscribers "
                        "(--json, default or --udd-format; may be compressed)")


def cmd_import_distro_tracker(args, config):
    """
    C{trackermail import-distro-tracker FILE}: import a distro-tracker
    subscriber dump. Exit 0 once imported (skipped entries are reported on
    stderr and counted in the summary), 1 when the file cannot be read.
    """
    started = time.monotonic()
    shown = [0]

    def warn(message: str) -> None:
        shown[0] += 1
        if shown[0] <= MAX_WARNINGS_SHOWN:
            sys.stderr.write(f"trackermail: warning: {' '.join(message.split())}\n")

    dump = read_dump(args.file)
    for number, reason in dump.problems:
        warn(f"{args.file}:{number}: {reason}" if number else f"{args.file}: {reason}")
    bad_lines = len(dump.problems)
    mapping = dump.subscriptions
    if not any(mapping.values()):
        raise CommandError(f"{args.file}: no subscriptions found")

    async def body(store):
        bar = Progress(sys.stderr, len(mapping))
        result = await import_dump(store, mapping, progress=bar.update, warn=warn)
        bar.done()
        if shown[0] > MAX_WARNINGS_SHOWN:
            sys.stderr.write(f"trackermail: warning: {shown[0] - MAX_WARNINGS_SHOWN} "
                             "more warnings not shown\n")
        elapsed = time.monotonic() - started
        print(f"imported {result.packages} packages from {args.file} ({dump.format} format): "
              f"{result.subscriptions_created} subscriptions created, "
              f"{result.already_present} already present, "
              f"{result.invalid + bad_lines} skipped "
              f"({result.invalid} invalid entries, {bad_lines} unreadable lines) "
              f"in {elapsed:.1f}s")
        return 0

    return run_with_store(config, body)


def register(add) -> None:
    """Add C{import-distro-tracker} through C{add(name, func, help)}."""
    p = add("import-distro-tracker", cmd_import_distro_tracker,
            "import a distro-tracker subscriber dump (JSON, plain or UDD format)")
    configure_parser(p)
