"""
Tests for trackermail.vendor.debian: the rules tracker.debian.org applies,
one test per rule, on messages shaped like the real ones.
"""

from twisted.trial.unittest import SynchronousTestCase

from tests.vendor import fixture, fixture_bytes, parse
from trackermail.vendor.base import NewsSource
from trackermail.vendor.debian import (
    DebianVendor,
    repository_package,
    source_removals,
)


def _without(raw: bytes, *names: bytes) -> bytes:
    """
    C{raw} without the header lines named C{names}.
    """
    head, sep, body = raw.partition(b"\n\n")
    lines = [
        line
        for line in head.split(b"\n")
        if not any(line.lower().startswith(n.lower() + b":") for n in names)
    ]
    return b"\n".join(lines) + sep + body


def _with(raw: bytes, *lines: bytes) -> bytes:
    """
    C{raw} with extra header lines at the top.
    """
    return b"".join(line + b"\n" for line in lines) + raw


class BugTrackerTests(SynchronousTestCase):
    def setUp(self):
        self.vendor = DebianVendor()

    def test_report_is_bts(self):
        """
        A new bug report goes to the source package, keyword bts.
        """
        msg = fixture("debbugs-report.eml")
        self.assertEqual(self.vendor.classify(msg, None, None), (("hello",), "bts"))

    def test_transcript_is_bts_control(self):
        """
        A control server transcript (X-Debian-PR-Message: transcript) is
        bts-control.
        """
        msg = fixture("debbugs-control.eml")
        self.assertEqual(
            self.vendor.classify(msg, None, None), (("hello",), "bts-control")
        )

    def test_several_sources(self):
        """
        A bug filed against packages of several sources goes to each source.
        """
        msg = fixture("debbugs-multi.eml")
        self.assertEqual(
            self.vendor.classify(msg, None, None), (("foo", "bar"), "bts")
        )

    def test_pr_package_without_pr_source(self):
        """
        Without X-Debian-PR-Source the (binary) packages of
        X-Debian-PR-Package are used.
        """
        msg = parse(_without(fixture_bytes("debbugs-multi.eml"), b"X-Debian-PR-Source"))
        self.assertEqual(
            self.vendor.classify(msg, None, None), (("libfoo1", "bar-utils"), "bts")
        )

    def test_src_prefix(self):
        """
        A C{src:NAME} in X-Debian-PR-Package names the source package NAME.
        """
        msg = parse(_without(fixture_bytes("debbugs-control.eml"), b"X-Debian-PR-Source"))
        self.assertEqual(
            self.vendor.classify(msg, None, None), (("hello",), "bts-control")
        )

    def test_empty_pr_source(self):
        """
        An empty X-Debian-PR-Source falls back to X-Debian-PR-Package.
        """
        raw = fixture_bytes("debbugs-report.eml").replace(
            b"X-Debian-PR-Source: hello", b"X-Debian-PR-Source: "
        )
        self.assertEqual(
            self.vendor.classify(parse(raw), None, None), (("hello",), "bts")
        )

    def test_matching_suggestion_kept(self):
        """
        When the address names one of the bug's packages, the mail goes to
        that package only (it reaches the others through their own address).
        """
        msg = fixture("debbugs-multi.eml")
        self.assertEqual(self.vendor.classify(msg, "bar", None), (("bar",), "bts"))

    def test_matching_suggestion_keyword_from_bts(self):
        """
        When the address names the bug's package, the bug tracker decides the
        keyword.
        """
        msg = fixture("debbugs-control.eml")
        self.assertEqual(
            self.vendor.classify(msg, "hello", "bts"), (("hello",), "bts-control")
        )

    def test_other_suggestion_not_overridden(self):
        """
        Bug mail sent to another package's address stays with that package
        and keeps the address's keyword.
        """
        msg = fixture("debbugs-report.eml")
        self.assertEqual(
            self.vendor.classify(msg, "other", "contact"), (("other",), "contact")
        )

    def test_other_suggestion_without_keyword(self):
        """
        Bug mail sent to another package's address without a keyword is bts
        mail of that package.
        """
        msg = fixture("debbugs-report.eml")
        self.assertEqual(self.vendor.classify(msg, "other", None), (("other",), "bts"))

    def test_no_package_headers(self):
        """
        Bug tracker mail naming no package gives no package.
        """
        raw = _without(
            fixture_bytes("debbugs-report.eml"),
            b"X-Debian-PR-Source",
            b"X-Debian-PR-Package",
        )
        self.assertEqual(self.vendor.classify(parse(raw), None, None), ((), "bts"))

    def test_only_bts_loop(self):
        """
        Mail that merely mentions the bug tracker (no X-Loop from it) is not
        bug tracker mail.
        """
        raw = _without(fixture_bytes("debbugs-report.eml"), b"X-Loop")
        self.assertEqual(self.vendor.classify(parse(raw), None, None), ((), None))


class ArchiveTests(SynchronousTestCase):
    def setUp(self):
        self.vendor = DebianVendor()

    def test_accepted_source(self):
        """
        An accepted upload whose changes list a .dsc is upload-source.
        """
        msg = fixture("dak-accepted-source.eml")
        self.assertEqual(
            self.vendor.classify(msg, None, None), (("hello",), "upload-source")
        )

    def test_accepted_binary(self):
        """
        An accepted upload without a .dsc (a binNMU) is upload-binary.
        """
        msg = fixture("dak-accepted-binary.eml")
        self.assertEqual(
            self.vendor.classify(msg, None, None), (("hello",), "upload-binary")
        )

    def test_accepted_maintainer_form(self):
        """
        The maintainer's C{..._source.changes ACCEPTED into unstable} mail is
        classified like the announcement.
        """
        raw = fixture_bytes("dak-accepted-source.eml").replace(
            b"Subject: Accepted hello 2.10-3 (source) into unstable",
            b"Subject: hello_2.10-3_source.changes ACCEPTED into unstable",
        )
        self.assertEqual(
            self.vendor.classify(parse(raw), None, None), (("hello",), "upload-source")
        )

    def test_accepted_package_from_subject(self):
        """
        Without X-Debian-Package or a suggestion, the package of an accepted
        upload is read from the subject.
        """
        raw = _without(fixture_bytes("dak-accepted-source.eml"), b"X-Debian-Package")
        self.assertEqual(
            self.vendor.classify(parse(raw), None, None), (("hello",), "upload-source")
        )

    def test_x_debian_package_wins(self):
        """
        X-Debian-Package decides the package of archive mail, whatever the
        address said.
        """
        msg = fixture("dak-accepted-binary.eml")
        self.assertEqual(
            self.vendor.classify(msg, "other", "contact"), (("hello",), "upload-binary")
        )

    def test_other_archive_mail(self):
        """
        Archive mail other than an acceptance (here: NEW) is archive.
        """
        msg = fixture("dak-new.eml")
        self.assertEqual(self.vendor.classify(msg, None, None), (("hello",), "archive"))

    def test_removal(self):
        """
        A C{dak rm} removal goes to every source package of its
        C{pkg | version | arch} lines, keyword archive.
        """
        msg = fixture("dak-rm.eml")
        self.assertEqual(
            self.vendor.classify(msg, None, None),
            (("oldfoo", "oldbar-plugin"), "archive"),
        )

    def test_removal_of_binaries_only(self):
        """
        A removal of binary packages only goes to X-Debian-Package.
        """
        raw = fixture_bytes("dak-rm.eml")
        raw = raw.replace(b"| source, all", b"| all").replace(b"| source\n", b"| amd64\n")
        self.assertEqual(
            self.vendor.classify(parse(raw), None, None), (("oldfoo",), "archive")
        )

    def test_source_removals_parser(self):
        """
        Only lines whose architecture list contains C{source} are source
        removals; other pipes in the body are ignored.
        """
        body = (
            "  foo | 1.0-1 | source, amd64\n"
            "libfoo | 1.0-1 | amd64\n"
            "libsource1 | 2.0 | all\n"
            "a | b | c | source\n"
            "text mentioning source | nothing\n"
        )
        self.assertEqual(source_removals(body), [("foo", "1.0-1")])

    def test_broken_archive_mail(self):
        """
        A removal whose body cannot be decoded goes to X-Debian-Package.
        """
        msg = fixture("broken-mime.eml")
        self.assertEqual(self.vendor.classify(msg, None, None), (("hello",), "archive"))


class OtherServicesTests(SynchronousTestCase):
    def setUp(self):
        self.vendor = DebianVendor()

    def test_buildd(self):
        """
        Build daemon mail is build, for X-Debian-Package.
        """
        msg = fixture("buildd.eml")
        self.assertEqual(self.vendor.classify(msg, None, None), (("hello",), "build"))

    def test_buildd_suggestion(self):
        """
        Build daemon mail without X-Debian-Package keeps the suggested
        package.
        """
        raw = _without(fixture_bytes("buildd.eml"), b"X-Debian-Package")
        self.assertEqual(
            self.vendor.classify(parse(raw), "hello", None), (("hello",), "build")
        )

    def test_autoremovals(self):
        """
        Testing autoremoval warnings are summary, for X-Debian-Package.
        """
        msg = fixture("autoremoval.eml")
        self.assertEqual(self.vendor.classify(msg, None, None), (("hello",), "summary"))

    def test_testing_watch(self):
        """
        Testing watch mail is summary, for X-Testing-Watch-Package.
        """
        msg = fixture("testing-watch.eml")
        self.assertEqual(self.vendor.classify(msg, None, None), (("hello",), "summary"))

    def test_gitlab(self):
        """
        GitLab push mail is vcs, for the last component of
        X-GitLab-Project-Path.
        """
        msg = fixture("gitlab-push.eml")
        self.assertEqual(self.vendor.classify(msg, None, None), (("hello",), "vcs"))

    def test_gitlab_project_only(self):
        """
        Without X-GitLab-Project-Path, X-GitLab-Project names the package.
        """
        raw = _without(fixture_bytes("gitlab-push.eml"), b"X-GitLab-Project-Path")
        self.assertEqual(self.vendor.classify(parse(raw), None, None), (("hello",), "vcs"))

    def test_git_multimail(self):
        """
        git-multimail mail is vcs, for X-Git-Repo without its C{.git}.
        """
        msg = fixture("git-multimail.eml")
        self.assertEqual(
            self.vendor.classify(msg, None, None), (("frobnicator",), "vcs")
        )

    def test_vcs_keeps_suggestions(self):
        """
        VCS mail sent to an explicit package and keyword keeps both.
        """
        msg = fixture("gitlab-push.eml")
        self.assertEqual(
            self.vendor.classify(msg, "hello-extras", "contact"),
            (("hello-extras",), "contact"),
        )

    def test_repository_package(self):
        """
        The package of a repository path is its last component without
        C{.git}.
        """
        self.assertEqual(repository_package("debian/hello.git"), "hello")
        self.assertEqual(repository_package("hello"), "hello")
        self.assertEqual(repository_package("group/sub/hello/"), "hello")
        self.assertIsNone(repository_package(".git"))

    def test_no_rule(self):
        """
        Mail no rule recognises keeps its suggestions.
        """
        msg = fixture("person.eml")
        self.assertEqual(self.vendor.classify(msg, "hello", None), (("hello",), None))
        self.assertEqual(self.vendor.classify(msg, None, None), ((), None))


class ApprovalAndHeadersTests(SynchronousTestCase):
    def setUp(self):
        self.vendor = DebianVendor()

    def test_bugzilla_approved(self):
        """
        Default mail from a Bugzilla (X-Bugzilla-Product) is approved.
        """
        self.assertTrue(self.vendor.approve_default(fixture("bugzilla.eml")))

    def test_person_not_approved(self):
        """
        Default mail from a person is not approved.
        """
        self.assertFalse(self.vendor.approve_default(fixture("person.eml")))

    def test_extra_headers(self):
        """
        Debian copies carry X-Debian, X-Debian-Package and the old PTS
        headers.
        """
        msg = fixture("debbugs-report.eml")
        self.assertEqual(
            self.vendor.extra_headers(msg, "hello", "bts", None),
            [
                ("X-Debian", "tracker.debian.org"),
                ("X-Debian-Package", "hello"),
                ("X-PTS-Package", "hello"),
                ("X-PTS-Keyword", "bts"),
            ],
        )

    def test_extra_headers_team_mail(self):
        """
        Mail to a team (no package) carries X-Debian and X-PTS-Keyword only.
        """
        msg = fixture("person.eml")
        self.assertEqual(
            self.vendor.extra_headers(msg, None, "contact", "perl"),
            [("X-Debian", "tracker.debian.org"), ("X-PTS-Keyword", "contact")],
        )


class DebianNewsTests(SynchronousTestCase):
    def setUp(self):
        self.vendor = DebianVendor()

    def test_accepted_source(self):
        """
        An accepted sourceful upload is news, created if unknown, by its
        Changed-By.
        """
        msg = fixture("dak-accepted-source.eml")
        self.assertEqual(
            self.vendor.news(msg, ("hello",), "upload-source"),
            [
                NewsSource(
                    "hello",
                    create_package=True,
                    created_by="Jérôme Développeur <jerome@example.org>",
                )
            ],
        )

    def test_accepted_binary(self):
        """
        A binary-only upload is no news.
        """
        msg = fixture("dak-accepted-binary.eml")
        self.assertEqual(self.vendor.news(msg, ("hello",), "upload-binary"), [])

    def test_removal(self):
        """
        Each source removal is news for its package.
        """
        msg = fixture("dak-rm.eml")
        self.assertEqual(
            self.vendor.news(msg, ("oldfoo", "oldbar-plugin"), "archive"),
            [NewsSource("oldfoo"), NewsSource("oldbar-plugin")],
        )

    def test_testing_watch(self):
        """
        Testing watch mail is news for its package.
        """
        msg = fixture("testing-watch.eml")
        self.assertEqual(self.vendor.news(msg, ("hello",), "summary"), [NewsSource("hello")])

    def test_other_archive_mail(self):
        """
        Other archive mail (NEW) is no news.
        """
        self.assertEqual(self.vendor.news(fixture("dak-new.eml"), ("hello",), "archive"), [])

    def test_accepted_not_from_archive(self):
        """
        A mail merely titled "Accepted ..." that is not from the archive is
        no news.
        """
        raw = _without(fixture_bytes("dak-accepted-source.eml"), b"X-Debian")
        self.assertEqual(self.vendor.news(parse(raw), ("hello",), "default"), [])

    def test_bug_mail(self):
        """
        Bug mail is no news.
        """
        msg = fixture("debbugs-report.eml")
        self.assertEqual(self.vendor.news(msg, ("hello",), "bts"), [])
