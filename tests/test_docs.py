"""
The documentation cannot drift from the code: every setting is in the
README's table and in tracker.toml.example with its default, the built-in
keywords are listed as the migration seeds them, links point at files of
the repository, and docs/design.md's map names paths that exist.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tomllib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from trackermail.config import Config, load_config
from trackermail.store.keywords import builtin_keywords

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLE = ROOT / "tracker.toml.example"
DESIGN = ROOT / "docs" / "design.md"

# Keys the example sets to something else than the default, on purpose.
EXAMPLE_NOT_DEFAULT = {("tracker", "fqdn"), ("tracker", "dev")}


def settings() -> dict[tuple[str, str], object]:
    """(section, key) -> default, from the Config dataclasses."""
    config = Config()
    found = {}
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for key in dataclasses.fields(values):
            found[(section.name, key.name)] = getattr(values, key.name)
    return found


def readme_settings() -> dict[tuple[str, str], str]:
    """(section, key) -> the default cell of the README's configuration table."""
    rows = re.findall(r"^\| `\[(\w+)\] (\w+)` \| ([^|]*) \|", README.read_text(), re.M)
    return {(section, key): default.strip() for section, key, default in rows}


def example_settings() -> tuple[set[tuple[str, str]], dict]:
    """Keys of tracker.toml.example, commented ones included, and its parsed values."""
    text = EXAMPLE.read_text()
    keys, section = set(), None
    for line in text.splitlines():
        header = re.match(r"^\[(\w+)\]", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"^#?\s*(\w+)\s*=", line)
        if key and section:
            keys.add((section, key.group(1)))
    return keys, tomllib.loads(text)


def literal(cell: str):
    """The value a README default cell spells, or None for prose like C{(none)}."""
    match = re.fullmatch(r"`([^`]*)`", cell)
    if match is None:
        return None
    try:
        return tomllib.loads(f"v = {match.group(1)}")["v"]
    except tomllib.TOMLDecodeError:
        return match.group(1)


def plain(value):
    return list(value) if isinstance(value, tuple) else value


class SettingsDocumentedTests(SynchronousTestCase):
    def test_every_setting_is_in_the_readme(self):
        """The README's table has a row for every setting, and none for settings that are gone."""
        documented = set(readme_settings())
        known = set(settings())
        self.assertEqual(
            (sorted(known - documented), sorted(documented - known)), ([], []),
            "README.md, ## Configuration: (settings without a row, rows without a setting)")

    def test_readme_defaults_are_the_real_ones(self):
        """A default the README writes as a literal is the schema's default."""
        real = settings()
        wrong = {}
        for key, cell in readme_settings().items():
            value = literal(cell)
            if key in real and value is not None and value != plain(real[key]):
                wrong[key] = (cell, real[key])
        self.assertEqual(wrong, {})

    def test_every_setting_is_in_the_example(self):
        """tracker.toml.example lists every setting, set to its default or commented out."""
        keys, parsed = example_settings()
        known = settings()
        self.assertEqual((sorted(set(known) - keys), sorted(keys - set(known))), ([], []),
                         "tracker.toml.example: (settings missing, keys that are no settings)")
        wrong = {}
        for section, values in parsed.items():
            for key, value in values.items():
                if (section, key) not in EXAMPLE_NOT_DEFAULT and \
                        value != plain(known[(section, key)]):
                    wrong[(section, key)] = (value, known[(section, key)])
        self.assertEqual(wrong, {})

    def test_example_is_a_working_configuration(self):
        """tracker.toml.example loads as it is (what `make run` starts with)."""
        config = load_config(str(EXAMPLE), warn=lambda message: None)
        self.assertEqual(config.tracker.fqdn, "tracker.example.org")


class KeywordsDocumentedTests(SynchronousTestCase):
    def test_readme_lists_the_builtin_keywords(self):
        """The README's keyword table is the migration's seed: names, defaults, descriptions."""
        rows = re.findall(r"^\| `([a-z0-9-]+)` \| (yes|no) \| ([^|]+) \|$",
                          README.read_text(), re.M)
        self.assertEqual([(name, flag == "yes", text.strip()) for name, flag, text in rows],
                         [(k.name, k.is_default, k.description) for k in builtin_keywords()])


def documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|^\[[^\]]+\]:\s*(\S+)", re.M)


def repository_files() -> set[str] | None:
    """Files git tracks (what a clone has), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {name for name in out.decode("utf-8", "replace").split("\0") if name}


class LinkTests(SynchronousTestCase):
    def test_links_stay_in_the_repository(self):
        """README.md and docs/ link only to files of the repository, never through ../."""
        tracked = repository_files()
        bad = []
        for doc in documents():
            for match in _LINK.finditer(doc.read_text()):
                target = (match.group(1) or match.group(2)).split("#")[0]
                if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue  # an anchor in the page, or https:, mailto:
                where = f"{doc.relative_to(ROOT)}: {target}"
                if "../" in target or target.startswith("/"):
                    bad.append(f"{where} (reaches outside: link within the repository)")
                    continue
                path = (doc.parent / target).resolve()
                relative = path.relative_to(ROOT).as_posix()
                exists = path.exists() if tracked is None else (
                    relative in tracked or any(t.startswith(relative + "/") for t in tracked))
                if not exists or not path.exists():
                    bad.append(f"{where} (no such file in the repository)")
        self.assertEqual(bad, [])

    def test_the_link_check_catches_bad_links(self):
        """The link pattern finds inline and reference links, so the check above can fail."""
        text = "see [a](../x/DESIGN.md) and [b](docs/none.md \"t\")\n[c]: docs/y.md\n"
        self.assertEqual([m.group(1) or m.group(2) for m in _LINK.finditer(text)],
                         ["../x/DESIGN.md", "docs/none.md", "docs/y.md"])


class DesignMapTests(SynchronousTestCase):
    def layout(self) -> list[str]:
        text = DESIGN.read_text()
        section = text.split("## Where the code lives", 1)[1]
        block = section.split("```", 2)[1]
        return [line.split()[0] for line in block.splitlines()
                if line.strip() and not line.startswith(" ")]

    def test_map_names_existing_paths(self):
        """Every path on docs/design.md's map exists."""
        paths = self.layout()
        self.assertGreater(len(paths), 10)
        self.assertEqual([p for p in paths if not (ROOT / p).exists()], [])

    def test_map_names_every_subpackage(self):
        """Every subpackage of trackermail/ is on the map."""
        paths = set(self.layout())
        packages = sorted(f"trackermail/{d.name}/" for d in (ROOT / "trackermail").iterdir()
                          if (d / "__init__.py").exists())
        self.assertEqual([p for p in packages if p not in paths], [])
