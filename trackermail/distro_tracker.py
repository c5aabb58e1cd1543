# -*- test-case-name: tests.test_importer_export -*-
"""
distro-tracker's own export, read into what trackermail stores.

The export is the output of distro-tracker's
C{manage.py dumpdata --natural-foreign --natural-primary}: a JSON list of
C{{"model": ..., "pk": ..., "fields": {...}}} objects. References are the
C{pk} of another object of the file, except accounts (C{User}), which have
no pk and are named by their C{main_email}. L{read_export} reads the models
that matter for mail and turns them into an L{Export}: names instead of
pks, and each address with the keyword sets it effectively has.

distro-tracker's rules, kept here:

  - an inactive subscription (never confirmed) is kept, inactive;
  - a subscription either follows the address's default keywords or has
    its own set (possibly empty);
  - an address without EmailSettings has the keywords marked default;
  - team mail: a membership's per-package keywords, else the membership's
    keywords, else the address's defaults; a muted membership, or a muted
    package of a membership, gets nothing.

trackermail knows an address once whatever its case; distro-tracker may
hold spellings that differ only in case as separate addresses. They are
merged so that the merged address receives what either spelling did (see
L{_merge_address}).

Bad rows are normal input: each is skipped (or its bad reference dropped),
counted by C{(model, reason)} and described in L{Export.messages}.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

from trackermail.errors import InvalidValue
from trackermail.validation import check_keyword, check_package_name, check_slug, normalize_email

KEYWORD = "core.keyword"
PACKAGE = "core.packagename"
SOURCE = "core.sourcepackage"
USER = "django_email_accounts.user"
USER_EMAIL = "django_email_accounts.useremail"
SETTINGS = "core.emailsettings"
SUBSCRIPTION = "core.subscription"
TEAM = "core.team"
MEMBERSHIP = "core.teammembership"
SPECIFICS = "core.membershippackagespecifics"
BOUNCES = "mail.bouncestats"
#: The models read, in the order their references need.
MODELS = (KEYWORD, PACKAGE, SOURCE, USER, USER_EMAIL, SETTINGS, SUBSCRIPTION, TEAM,
          MEMBERSHIP, SPECIFICS, BOUNCES)
#: Descriptions kept in L{Export.messages}; the rest are only counted.
MAX_MESSAGES = 1000


@dataclass(frozen=True)
class Subscription:
    """@ivar keywords: its own set, or None to follow the address's defaults."""

    active: bool
    keywords: frozenset | None


@dataclass
class Address:
    """@ivar defaults: the address's default keywords (its EmailSettings')."""

    email: str
    defaults: frozenset
    subscriptions: dict[str, Subscription] = field(default_factory=dict)


@dataclass(frozen=True)
class PackageSetting:
    """A membership's settings for one package (C{keywords} None: not its own)."""

    muted: bool
    keywords: frozenset | None


@dataclass
class Membership:
    """@ivar keywords: its own set, or None to follow the address's defaults."""

    muted: bool
    keywords: frozenset | None
    packages: dict[str, PackageSetting] = field(default_factory=dict)


@dataclass
class Team:
    slug: str
    name: str
    public: bool
    owner: str | None  # email_lower
    packages: list[str] = field(default_factory=list)
    members: dict[str, Membership] = field(default_factory=dict)  # by email_lower


@dataclass
class Export:
    """
    What an export holds for trackermail.

    @ivar keywords: name -> C{(is_default, description)}.
    @ivar packages: name -> kind (C{source}, C{pseudo} or C{other}).
    @ivar binaries: C{(binary name, source name)} pairs.
    @ivar addresses: by email_lower.
    @ivar teams: by slug.
    @ivar bounces: C{(email_lower, day)} -> C{(sent, bounced)}.
    @ivar problems: C{(model, reason)} -> count of rows skipped, references
        dropped or values adapted.
    @ivar messages: C{"model pk: reason"} of the first L{MAX_MESSAGES} problems.
    @ivar ignored: model -> rows of models the import does not use.
    """

    keywords: dict[str, tuple[bool, str]] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)
    binaries: set[tuple[str, str]] = field(default_factory=set)
    addresses: dict[str, Address] = field(default_factory=dict)
    teams: dict[str, Team] = field(default_factory=dict)
    bounces: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    problems: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)

    def totals(self) -> dict[str, int]:
        """How many rows of each kind the import brings to the store."""
        members = [m for t in self.teams.values() for m in t.members.values()]
        return {
            "keywords": len(self.keywords),
            "packages": len(self.packages),
            "binary_packages": len(self.binaries),
            "addresses": len(self.addresses),
            "subscriptions": sum(len(a.subscriptions) for a in self.addresses.values()),
            "teams": len(self.teams),
            "team_packages": sum(len(set(t.packages)) for t in self.teams.values()),
            "memberships": len(members),
            "membership_packages": sum(len(m.packages) for m in members),
            "bounce_stats": len(self.bounces),
        }

    def size(self) -> int:
        """The units the import reports its progress in, all of them."""
        totals = self.totals()
        return sum(totals.values()) - totals["binary_packages"] - totals["membership_packages"]


def looks_like_export(data) -> bool:
    """Whether parsed JSON is a dumpdata export (a list with model objects)."""
    return isinstance(data, list) and any(
        isinstance(row, dict) and isinstance(row.get("model"), str) for row in data)


class _Bad(Exception):
    """A row, or one reference in it, cannot be used; the text says why."""


_MISSING = object()


def _bool(fields: dict, name: str, default=_MISSING) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise _Bad(f"{name} is not true or false")
    return value


def _text(fields: dict, name: str, default=_MISSING) -> str:
    value = fields.get(name, default)
    if not isinstance(value, str):
        raise _Bad(f"{name} is not text")
    return value


def _count(fields: dict, name: str) -> int:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Bad(f"{name} is not a count")
    return value


def _pk(value):
    """A numeric pk, or None (a natural key, a list, anything else)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _natural(value):
    """The text of a natural key (C{["x"]} or C{"x"}), or None."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) else None


class _Reader:
    def __init__(self, export: Export):
        self.export = export
        self.keyword_names: dict[int, str] = {}
        self.package_names: dict[int, str] = {}
        self.package_pks: dict[str, int] = {}
        self.accounts: dict[str, str] = {}  # main_email lower -> spelling
        self.emails: dict[int, str] = {}  # UserEmail pk -> spelling
        self.email_pks: dict[str, int] = {}  # spelling lower -> first pk
        self.settings: dict[int, int] = {}  # EmailSettings pk -> UserEmail pk
        self.defaults: dict[int, frozenset] = {}  # UserEmail pk -> default keywords
        self.subscriptions: dict[int, dict[str, Subscription]] = {}
        self.teams: dict[int, Team] = {}
        self.slugs: set[str] = set()
        self.memberships: dict[int, tuple[int, int, Membership]] = {}  # pk -> team, email
        self.member_of: set[tuple[int, int]] = set()  # (team pk, UserEmail pk)
        self.bounces: dict[tuple[int, str], tuple[int, int]] = {}

    def problem(self, model: str, pk, reason: str) -> None:
        self.export.problems[(model, reason)] += 1
        if len(self.export.messages) < MAX_MESSAGES:
            self.export.messages.append(f"{model} {pk}: {reason}")

    # References --------------------------------------------------------

    def email_ref(self, value) -> int:
        if _pk(value) in self.emails:
            return value
        natural = _natural(value)
        if natural is not None and natural.lower() in self.email_pks:
            return self.email_pks[natural.lower()]
        raise _Bad("row skipped: its address is unknown or was skipped")

    def package_ref(self, value) -> str:
        if _pk(value) in self.package_names:
            return self.package_names[value]
        natural = _natural(value)
        if natural is not None and natural in self.package_pks:
            return natural
        raise _Bad("row skipped: its package is unknown or was skipped")

    def keyword_set(self, model: str, pk, fields: dict, name: str) -> frozenset:
        values = fields.get(name)
        if not isinstance(values, list):
            raise _Bad(f"{name} is not a list")
        names = set()
        for value in values:
            if _pk(value) in self.keyword_names:
                names.add(self.keyword_names[value])
            elif _natural(value) in self.export.keywords:
                names.add(_natural(value))
            else:
                self.problem(model, pk, "keyword reference dropped: unknown keyword")
        return frozenset(names)

    # Models ------------------------------------------------------------

    def keyword(self, pk, f: dict) -> None:
        name = _text(f, "name")
        try:
            check_keyword(name)
        except InvalidValue:
            raise _Bad("row skipped: not a keyword name trackermail accepts")
        if name in self.export.keywords:
            raise _Bad("row skipped: a keyword of that name came before")
        self.export.keywords[name] = (_bool(f, "default"), _text(f, "description", ""))
        self.keyword_names[pk] = name

    def packagename(self, pk, f: dict) -> None:
        name = _text(f, "name")
        try:
            check_package_name(name)
        except InvalidValue:
            raise _Bad("row skipped: not a package name trackermail accepts")
        if name in self.package_pks:
            raise _Bad("row skipped: a package of that name came before")
        source, pseudo = _bool(f, "source", False), _bool(f, "pseudo", False)
        _bool(f, "binary", False)
        self.export.packages[name] = "source" if source else "pseudo" if pseudo else "other"
        self.package_names[pk] = name
        self.package_pks[name] = pk

    def sourcepackage(self, pk, f: dict) -> None:
        source = self.package_ref(f.get("source_package_name"))
        binaries = f.get("binary_packages", [])
        if not isinstance(binaries, list):
            raise _Bad("binary_packages is not a list")
        for value in binaries:
            try:
                self.export.binaries.add((self.package_ref(value), source))
            except _Bad:
                self.problem(SOURCE, pk, "binary reference dropped: unknown package")

    def user(self, pk, f: dict) -> None:
        email = _text(f, "main_email")
        self.accounts[email.strip().lower()] = email.strip()

    def useremail(self, pk, f: dict) -> None:
        try:
            email = normalize_email(f.get("email"))
        except InvalidValue:
            raise _Bad("row skipped: not a valid email address")
        self.emails[pk] = email
        lower = email.lower()
        if lower in self.email_pks:
            self.problem(USER_EMAIL, pk, "merged with an address that differs only in case")
        else:
            self.email_pks[lower] = pk

    def emailsettings(self, pk, f: dict) -> None:
        owner = self.email_ref(f.get("user_email"))
        if owner in self.defaults:
            raise _Bad("row skipped: the address has settings already")
        keywords = self.keyword_set(SETTINGS, pk, f, "default_keywords")
        self.settings[pk] = owner
        self.defaults[owner] = keywords

    def subscription(self, pk, f: dict) -> None:
        if _pk(f.get("email_settings")) not in self.settings:
            raise _Bad("row skipped: its email settings are unknown or were skipped")
        owner = self.settings[f["email_settings"]]
        package = self.package_ref(f.get("package"))
        active = _bool(f, "active")
        keywords = None
        if not _bool(f, "_use_user_default_keywords"):
            keywords = self.keyword_set(SUBSCRIPTION, pk, f, "_keywords")
        own = self.subscriptions.setdefault(owner, {})
        if package in own:
            raise _Bad("row skipped: the address is subscribed to that package already")
        own[package] = Subscription(active, keywords)

    def team(self, pk, f: dict) -> None:
        given = _text(f, "slug")
        slug = given.strip().lower().replace("_", "-").lstrip("-")
        try:
            check_slug(slug)
        except InvalidValue:
            raise _Bad("row skipped: not a team slug trackermail accepts")
        if slug in self.slugs:
            raise _Bad("row skipped: a team with that slug came before")
        self.slugs.add(slug)
        if slug != given:
            self.problem(TEAM, pk, "slug changed to lower case, '-' for '_'")
        public = _bool(f, "public", True)
        name = _text(f, "name", "").strip() or slug
        owner = None
        if f.get("owner") is not None:
            owner = self.account(pk, f["owner"])
        team = Team(slug, name, public, owner)
        packages = f.get("packages", [])
        if not isinstance(packages, list):
            self.problem(TEAM, pk, "packages dropped: not a list")
            packages = []
        for value in packages:
            try:
                team.packages.append(self.package_ref(value))
            except _Bad:
                self.problem(TEAM, pk, "package reference dropped: unknown package")
        self.teams[pk] = team

    def account(self, pk, value) -> str | None:
        """The email_lower of an account reference (its main_email)."""
        main = _natural(value)
        try:
            email = normalize_email(main)
        except InvalidValue:
            self.problem(TEAM, pk, "owner dropped: not an account's address")
            return None
        lower = email.lower()
        if lower in self.email_pks:
            return lower
        if lower not in self.accounts:
            self.problem(TEAM, pk, "owner dropped: unknown account")
            return None
        # An account's main address is normally one of its UserEmails too.
        self.emails[("account", lower)] = email
        self.email_pks[lower] = ("account", lower)
        return lower

    def teammembership(self, pk, f: dict) -> None:
        member = self.email_ref(f.get("user_email"))
        if _pk(f.get("team")) not in self.teams:
            raise _Bad("row skipped: its team is unknown or was skipped")
        muted = _bool(f, "muted")
        keywords = None
        if _bool(f, "has_membership_keywords"):
            keywords = self.keyword_set(MEMBERSHIP, pk, f, "default_keywords")
        if (f["team"], member) in self.member_of:
            raise _Bad("row skipped: the address is a member of that team already")
        self.member_of.add((f["team"], member))
        self.memberships[pk] = (f["team"], member, Membership(muted, keywords))

    def membershippackagespecifics(self, pk, f: dict) -> None:
        if _pk(f.get("membership")) not in self.memberships:
            raise _Bad("row skipped: its membership is unknown or was skipped")
        membership = self.memberships[f["membership"]][2]
        package = self.package_ref(f.get("package_name"))
        muted = _bool(f, "muted")
        keywords = None
        if _bool(f, "_has_keywords"):
            keywords = self.keyword_set(SPECIFICS, pk, f, "keywords")
        if package in membership.packages:
            raise _Bad("row skipped: the membership has settings for that package already")
        membership.packages[package] = PackageSetting(muted, keywords)

    def bouncestats(self, pk, f: dict) -> None:
        owner = self.email_ref(f.get("user_email"))
        day = _text(f, "date")
        try:
            if len(day) != 10:
                raise ValueError(day)
            dt.date.fromisoformat(day)
        except ValueError:
            raise _Bad("row skipped: date is not YYYY-MM-DD")
        counts = (_count(f, "mails_sent"), _count(f, "mails_bounced"))
        if (owner, day) in self.bounces:
            raise _Bad("row skipped: the address has stats for that day already")
        self.bounces[(owner, day)] = counts


def read_export(rows: list) -> Export:
    """Read a parsed dumpdata export; see the module's docstring."""
    export = Export()
    reader = _Reader(export)
    by_model: dict[str, list] = {}
    for row in rows:
        if not (isinstance(row, dict) and isinstance(row.get("model"), str)
                and isinstance(row.get("fields"), dict)):
            reader.problem("(unknown)", "-", "row skipped: not a dumpdata object")
            continue
        if row["model"] in MODELS:
            by_model.setdefault(row["model"], []).append(row)
        else:
            export.ignored[row["model"]] += 1
    for model in MODELS:
        read = getattr(reader, model.rpartition(".")[2])
        seen: set[int] = set()
        for row in by_model.get(model, ()):
            pk = row.get("pk")
            if model != USER and _pk(pk) is None:
                reader.problem(model, pk, "row skipped: no numeric pk")
                continue
            if model != USER and pk in seen:
                reader.problem(model, pk, "row skipped: a row with that pk came before")
                continue
            seen.add(pk)
            try:
                read(pk, row["fields"])
            except _Bad as e:
                reason = str(e)
                if not reason.startswith("row skipped"):
                    reason = f"row skipped: {reason}"
                reader.problem(model, pk, reason)
    _build_addresses(reader, export)
    return export


# ---------------------------------------------------------------------------
# Addresses, with spellings that differ only in case merged


def _build_addresses(reader: _Reader, export: Export) -> None:
    flagged = frozenset(name for name, (default, _) in export.keywords.items() if default)
    groups: dict[str, list] = {}
    for pk, email in reader.emails.items():
        groups.setdefault(email.lower(), []).append(pk)
    team_members: dict[int, dict[str, list]] = {}
    for team_pk, member, membership in reader.memberships.values():
        team_members.setdefault(team_pk, {}).setdefault(
            reader.emails[member].lower(), []).append((member, membership))
    for lower, pks in groups.items():
        export.addresses[lower] = _merge_address(
            reader, lower, pks, flagged)
    for team_pk, team in reader.teams.items():
        for lower, members in team_members.get(team_pk, {}).items():
            address = export.addresses[lower]
            team.members[lower] = _merge_memberships([
                _relative_membership(m, reader.defaults.get(pk, flagged), address.defaults)
                for pk, m in members], address.defaults)
        export.teams[team.slug] = team
    for (pk, day), (sent, bounced) in reader.bounces.items():
        key = (reader.emails[pk].lower(), day)
        old = export.bounces.get(key, (0, 0))
        export.bounces[key] = (old[0] + sent, old[1] + bounced)


def _relative(keywords, own_defaults, address_defaults):
    """A set that followed one spelling's defaults, against the merged address's."""
    if keywords is None and own_defaults != address_defaults:
        return own_defaults
    return keywords


def _merge_address(reader: _Reader, lower: str, pks: list, flagged: frozenset) -> Address:
    """
    One address from its spellings: its defaults are the union of theirs,
    and a subscription to a package both spellings had gets what either
    effectively received. A set that followed a spelling's defaults is
    written out when those differ from the merged defaults.
    """
    # The first spelling in the export is kept; pks of accounts' addresses
    # (tuples) come after numeric ones.
    pks = sorted(pks, key=lambda pk: (0, pk, "") if _pk(pk) is not None else (1, 0, pk[1]))
    with_settings = [reader.defaults[pk] for pk in pks if pk in reader.defaults]
    defaults = frozenset().union(*with_settings) if with_settings else flagged
    address = Address(reader.emails[pks[0]], defaults)
    per_package: dict[str, list[Subscription]] = {}
    for pk in pks:
        own_defaults = reader.defaults.get(pk, flagged)
        for package, sub in reader.subscriptions.get(pk, {}).items():
            per_package.setdefault(package, []).append(
                Subscription(sub.active, _relative(sub.keywords, own_defaults, defaults)))
    for package, subs in per_package.items():
        if len(subs) == 1:
            address.subscriptions[package] = subs[0]
            continue
        receiving = [s for s in subs if s.active] or subs
        keywords = None
        if any(s.keywords is not None for s in receiving):
            keywords = frozenset().union(
                *(defaults if s.keywords is None else s.keywords for s in receiving))
        address.subscriptions[package] = Subscription(bool(any(s.active for s in subs)),
                                                      keywords)
    return address


def _relative_membership(m: Membership, own_defaults, address_defaults) -> Membership:
    return Membership(m.muted, _relative(m.keywords, own_defaults, address_defaults),
                      {p: PackageSetting(s.muted, s.keywords) for p, s in m.packages.items()})


def _merge_memberships(memberships: list[Membership], defaults: frozenset) -> Membership:
    """
    One membership from those of several spellings of an address in one
    team: muted only if all are; for every package any of them has settings
    for, the union of what the unmuted ones received.
    """
    if len(memberships) == 1:
        return memberships[0]
    receiving = [m for m in memberships if not m.muted]
    if not receiving:
        return memberships[0]

    def level(m):
        return defaults if m.keywords is None else m.keywords

    keywords = None
    if any(m.keywords is not None for m in receiving):
        keywords = frozenset().union(*(level(m) for m in receiving))
    merged = Membership(False, keywords)
    for package in sorted({p for m in receiving for p in m.packages}):
        got = []
        for m in receiving:
            setting = m.packages.get(package)
            if setting is not None and setting.muted:
                continue
            got.append(level(m) if setting is None or setting.keywords is None
                       else setting.keywords)
        merged.packages[package] = (PackageSetting(False, frozenset().union(*got)) if got
                                    else PackageSetting(True, None))
    return merged
