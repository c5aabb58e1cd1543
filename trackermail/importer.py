# -*- test-case-name: tests.test_importer -*-
"""
Moving a distro-tracker site: its subscribers, teams and settings,
imported without asking anyone to subscribe again.

C{trackermail import-distro-tracker FILE} reads, recognised by their shape
(the file may be plain, gzip, xz or bzip2):

  - distro-tracker's own export, C{manage.py dumpdata --natural-foreign
    --natural-primary} (a JSON list): keywords, packages, addresses with
    their default keywords, subscriptions (active or not) with their
    keywords, teams, memberships and their per-package settings, bounce
    statistics; read by L{trackermail.distro_tracker}, imported by
    L{import_export};
  - the output of its C{tracker_dump_subscribers} (package -> active
    subscribers only): C{--json} (one JSON object), the default
    C{pkg => [ a@x b@y ]} lines, or C{--udd-format} C{pkg<TAB>a@x, b@y}
    lines; imported by L{import_dump}.

Both imports run in transactions of bounded size, with a handful of
statements each (the store programs are in L{trackermail.store.importing}),
and are idempotent: a second run writes nothing and says so. What cannot
be imported (unreadable lines, bad names and addresses, broken references)
is skipped, counted by reason and reported, never fatal.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from trackermail.cli_support import CommandError, Progress, run_with_store
from trackermail.distro_tracker import Export, looks_like_export, read_export
from trackermail.errors import InvalidValue, TrackerError
from trackermail.store import importing
from trackermail.validation import check_package_name, normalize_email

log = Logger()

BATCH_PACKAGES = 1000
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

    @ivar format: C{"export"} (distro-tracker's dumpdata), C{"json"},
        C{"plain"} or C{"udd"}.
    @ivar subscriptions: package -> emails, in the file's order, each
        package once (repeated lines are merged); empty for an export.
    @ivar problems: C{(line number, reason)} of every line skipped; line 0
        for problems of the JSON format, which has no useful line numbers.
    """

    format: str
    subscriptions: dict[str, list[str]] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)
    export: Export | None = None


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
    C{"export"}, C{"json"}, C{"plain"} or C{"udd"} from the first
    non-blank line, or None when it looks like none of them (an empty dump
    is plain).
    """
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            return "export"
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


def _load_json(text: str):
    try:
        return json.loads(text)
    except ValueError as e:
        raise DumpError(f"not valid JSON: {e}")
    except RecursionError:
        raise DumpError("not valid JSON: nested too deeply")


def _parse_export(text: str, dump: Dump) -> None:
    data = _load_json(text)
    if not looks_like_export(data):
        raise DumpError("a JSON list, but not distro-tracker's dumpdata export "
                        "(objects with \"model\", \"pk\" and \"fields\")")
    dump.export = read_export(data)


def _parse_json(text: str, dump: Dump) -> None:
    data = _load_json(text)
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
    Read a dump file of any of the four formats.

    @raise DumpError: the file cannot be read, is broken JSON, or is in no
        known format.
    """
    text = _read_text(path)
    fmt = detect_format(text)
    if fmt is None:
        raise DumpError(
            f"{path}: not a distro-tracker dump (expected its dumpdata JSON export, "
            "tracker_dump_subscribers JSON, 'PACKAGE => [ EMAIL ... ]' lines or "
            "'PACKAGE<TAB>EMAIL, ...' lines)"
        )
    dump = Dump(fmt)
    try:
        if fmt == "export":
            _parse_export(text, dump)
        elif fmt == "json":
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


def _batches(items: Sequence, weight: Callable, limit: int):
    batch, size = [], 0
    for item in items:
        if batch and size + weight(item) > limit:
            yield batch, size
            batch, size = [], 0
        batch.append(item)
        size += weight(item)
    if batch:
        yield batch, size


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
        for chunk, _ in _batches(names, lambda _: 1, max(1, batch_size)):
            made, present = await store.run(importing.import_batch,
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
# distro-tracker's export

#: Rows per transaction: an address with its subscriptions, a team with its
#: packages and memberships, a day of bounce statistics count one each.
BATCH_ROWS = 5000

#: What the export import counts, in the order of its summary.
CATEGORIES = {
    "keywords": "keywords",
    "packages": "packages",
    "binary_packages": "binary package links",
    "addresses": "addresses",
    "subscriptions": "subscriptions",
    "teams": "teams",
    "team_packages": "team packages",
    "memberships": "team memberships",
    "membership_packages": "per-package membership settings",
    "bounce_stats": "bounce statistics (address-days)",
}


@dataclass
class Tally:
    """How many rows of one kind the export holds, and what became of them."""

    total: int = 0
    created: int = 0
    updated: int = 0

    @property
    def unchanged(self) -> int:
        return self.total - self.created - self.updated

    def add(self, counts: tuple[int, int]) -> None:
        self.created += counts[0]
        self.updated += counts[1]


@dataclass
class ExportResult:
    """
    @ivar tallies: category (see L{CATEGORIES}) -> L{Tally}.
    @ivar inactive: subscriptions of the export that are inactive.
    @ivar problems: C{(model, reason)} -> count (see L{Export.problems}).
    @ivar ignored: model -> rows of models the import does not read.
    """

    tallies: dict[str, Tally]
    inactive: int
    problems: Counter
    ignored: Counter

    @property
    def changed(self) -> bool:
        return any(t.created or t.updated for t in self.tallies.values())

    def summary(self) -> list[str]:
        """The lines a user reads: one per category, then one per reason."""
        lines = []
        for key, label in CATEGORIES.items():
            t = self.tallies[key]
            extra = f" ({self.inactive} of them inactive)" if key == "subscriptions" \
                and self.inactive else ""
            lines.append(f"  {label + ':':<34}{t.total:>8} in the export: {t.created} created, "
                         f"{t.updated} changed, {t.unchanged} unchanged{extra}")
        if self.problems:
            lines.append("skipped or adjusted, by reason:")
            for (model, reason), count in sorted(self.problems.items()):
                lines.append(f"  {count:>8}  {model}: {reason}")
        else:
            lines.append("nothing skipped")
        if self.ignored:
            models = ", ".join(f"{m} ({n})" for m, n in sorted(self.ignored.items()))
            lines.append(f"rows of models the import does not read: {models}")
        if self.changed:
            created = sum(t.created for t in self.tallies.values())
            updated = sum(t.updated for t in self.tallies.values())
            lines.append(f"{created} rows created, {updated} changed")
        else:
            lines.append("nothing changed: the store already holds all of it")
        return lines


def _ids(names: Iterable[str], ids: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(sorted(ids[name] for name in names))


def _address_row(lower: str, address, keywords, packages, flagged) -> tuple:
    # An address whose defaults are the keywords marked default follows
    # them, like one that never chose its own.
    own = address.defaults != flagged
    return (address.email, lower, own, _ids(address.defaults if own else (), keywords),
            tuple((packages[p], s.active, s.keywords is not None, _ids(s.keywords or (), keywords))
                  for p, s in sorted(address.subscriptions.items())))


def _team_row(team, keywords, packages) -> tuple:
    def setting(muted, names):
        return bool(muted), names is not None, _ids(names or (), keywords)

    members = tuple(
        (lower, *setting(m.muted, m.keywords),
         tuple((packages[p], *setting(ps.muted, ps.keywords))
               for p, ps in sorted(m.packages.items())))
        for lower, m in sorted(team.members.items()))
    return (team.slug, team.name, team.public, team.owner,
            tuple(sorted({packages[p] for p in team.packages})), members)


def import_export(store, export: Export, progress: Callable[[int], None] | None = None,
                  batch_rows: int = BATCH_ROWS, now: float | None = None) -> Deferred:
    """
    Bring the store to what a distro-tracker export (read by
    L{trackermail.distro_tracker.read_export}) holds: keywords (with the
    export's default flags and descriptions), packages, addresses with
    their default keywords, subscriptions, teams, memberships, bounce
    statistics. Rows of the store the export does not name are kept; rows
    it names take its values. One transaction per C{batch_rows} rows;
    C{progress(n)} is called after each, up to C{export.size()}.

    @return: a Deferred firing with an L{ExportResult}.
    """

    async def run() -> ExportResult:
        when = time.time() if now is None else now
        tallies = {key: Tally() for key in CATEGORIES}
        done = 0

        def advance(size: int) -> None:
            nonlocal done
            done += size
            if progress is not None:
                progress(done)

        keywords, flagged, *counts = await store.run(
            importing.import_keywords,
            [(name, d, desc) for name, (d, desc) in sorted(export.keywords.items())])
        tallies["keywords"].add(counts)
        packages, *counts = await store.run(
            importing.import_packages, sorted(export.packages.items()),
            sorted(export.binaries))
        tallies["packages"].add(counts[:2])
        tallies["binary_packages"].add((counts[2], 0))
        advance(len(export.keywords) + len(export.packages))

        rows = [_address_row(lower, a, keywords, packages, flagged)
                for lower, a in sorted(export.addresses.items())]
        for batch, size in _batches(rows, lambda r: 1 + len(r[4]), batch_rows):
            counts = await store.run(importing.import_addresses, batch, when)
            tallies["addresses"].add(counts["addresses"])
            tallies["subscriptions"].add(counts["subscriptions"])
            advance(size)

        rows = [_team_row(t, keywords, packages) for _, t in sorted(export.teams.items())]
        for batch, size in _batches(rows, lambda r: 1 + len(r[4]) + len(r[5]), batch_rows):
            counts = await store.run(importing.import_teams, batch)
            for key, value in counts.items():
                tallies[key].add(value)
            advance(size)

        rows = [(lower, day, sent, bounced)
                for (lower, day), (sent, bounced) in sorted(export.bounces.items())]
        for batch, size in _batches(rows, lambda r: 1, batch_rows):
            tallies["bounce_stats"].add(await store.run(importing.import_bounce_stats, batch))
            advance(size)

        for key, total in export.totals().items():
            tallies[key].total = total
        result = ExportResult(tallies, sum(not s.active for a in export.addresses.values()
                                           for s in a.subscriptions.values()),
                              export.problems, export.ignored)
        log.info("import: distro-tracker export, {created} rows created, {updated} changed, "
                 "{skipped} problems", created=sum(t.created for t in tallies.values()),
                 updated=sum(t.updated for t in tallies.values()),
                 skipped=sum(export.problems.values()))
        return result

    return Deferred.fromCoroutine(run())


# ---------------------------------------------------------------------------
# The admin command


def configure_parser(parser) -> None:
    """Arguments of C{trackermail import-distro-tracker}."""
    parser.add_argument("file", help="distro-tracker's export (manage.py dumpdata "
                        "--natural-foreign --natural-primary), or the output of "
                        "tracker_dump_subscribers (--json, default or --udd-format); "
                        "may be compressed")


def cmd_import_distro_tracker(args, config):
    """
    C{trackermail import-distro-tracker FILE}: import distro-tracker's
    export or a subscriber dump. Exit 0 once imported (skipped entries are
    reported on stderr and counted in the summary), 1 when the file cannot
    be read.
    """
    started = time.monotonic()
    shown = [0]

    def warn(message: str) -> None:
        shown[0] += 1
        if shown[0] <= MAX_WARNINGS_SHOWN:
            sys.stderr.write(f"trackermail: warning: {' '.join(message.split())}\n")

    dump = read_dump(args.file)
    if dump.export is not None:
        return _import_export_command(args, config, dump.export, warn, shown, started)
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
            "import distro-tracker's export (dumpdata) or a subscriber dump")
    configure_parser(p)


def _import_export_command(args, config, export: Export, warn, shown, started) -> int:
    if not (export.keywords or export.packages or export.addresses or export.teams):
        raise CommandError(f"{args.file}: nothing to import (no keywords, packages, "
                           "addresses or teams)")
    for message in export.messages:
        warn(message)
    shown[0] += sum(export.problems.values()) - len(export.messages)

    async def body(store):
        bar = Progress(sys.stderr, export.size())
        result = await import_export(store, export, progress=bar.update)
        bar.done()
        if shown[0] > MAX_WARNINGS_SHOWN:
            sys.stderr.write(f"trackermail: warning: {shown[0] - MAX_WARNINGS_SHOWN} "
                             "more warnings not shown\n")
        elapsed = time.monotonic() - started
        print(f"imported {args.file} (distro-tracker export) in {elapsed:.1f}s:")
        for line in result.summary():
            print(line)
        return 0

    return run_with_store(config, body)
