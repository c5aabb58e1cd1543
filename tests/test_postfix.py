"""
The recipe of docs/postfix.md against a real Postfix: a private instance
(own config, queue and data directories under a temporary directory, smtpd
on a high loopback port) hands the tracker's domain to the in-process
tracker over LMTP, and relays everything else to a loopback sink; the
tracker sends its replies and copies out through that same Postfix. One
test swaps LMTP for the pipe transport (`trackermail deliver` run by
pipe(8)).

Skipped when Postfix is not installed or when not running as root (Postfix
starts as root and drops to its mail_owner); CI installs Postfix and runs as
root.
"""

from __future__ import annotations

import email
import email.policy
import grp
import os
import pwd
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.support.net import listen_local, poll, unused_port
from tests.support.outbound import SinkFactory
from tests.support.tracker import start_tracker
from trackermail.store.packages import add_package
from trackermail.store.subscriptions import subscribe

FQDN = "tracker.example.org"
MTA_HOSTNAME = "mta.test.invalid"
WAIT = 60.0
PIPE_USER = "nobody"

# Recipient validation of docs/postfix.md: only the tracker's address forms
# pass Postfix's RCPT TO; everything else is refused there, before the
# tracker is asked.
RECIPIENTS_REGEXP = r"""
/^(control|dispatch)@tracker\.example\.org$/                                 OK
/^dispatch\+[a-z0-9][a-z0-9+.-]+(_[a-z0-9][a-z0-9-]*)?@tracker\.example\.org$/ OK
/^team\+[a-z0-9][a-z0-9-]*@tracker\.example\.org$/                           OK
/^bounces\+.+@tracker\.example\.org$/                                        OK
"""

# Only the services this test needs; chroot off (column 5 "n") so that no
# copies of /etc files are needed in the queue directory.
MASTER_CF = """\
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
{extra}"""

# The pipe alternative of docs/postfix.md, as an unprivileged user.
PIPE_SERVICE = """\
trackermail unix -      n       n       -       -       pipe
  flags=R user={user} argv=/usr/bin/env SENDER=${{sender}} {command} deliver ${{recipient}}
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = trackermail-test-postfix
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
myhostname = {hostname}
mydomain = test.invalid
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# The tracker's domain: accepted, validated, and handed over by LMTP.
relay_domains = {fqdn}
relay_recipient_maps = regexp:{base}/etc/tracker_recipients
transport_maps = inline:{{ {fqdn}={transport} }}
trackermail_destination_recipient_limit = 1
# Every other domain (the tracker's replies and copies): to the sink.
relayhost = [127.0.0.1]:{sink_port}
# Retry fast: a test waits seconds, not the default minutes.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
lmtp_connect_timeout = 10s
smtp_connect_timeout = 10s
"""


def _postfix_missing() -> str | None:
    for tool in ("postfix", "postconf"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed (apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "the postfix user or postdrop group does not exist"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class PrivatePostfix:
    """
    A Postfix instance of its own in C{base}: C{start}, C{stop}, C{log}.
    """

    def __init__(self, base: str, sink_port: int):
        self.base = base
        self.etc = os.path.join(base, "etc")
        self.sink_port = sink_port
        self.port = 0
        # Set before start: the tracker's LMTP port, or a pipe command.
        self.lmtp_port = 0
        self.pipe_command: str | None = None

    def _postfix(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([_tool("postfix"), "-c", self.etc, *args],
                              capture_output=True, text=True, timeout=60)

    def _configure(self, port: int) -> None:
        os.makedirs(self.etc, exist_ok=True)
        # Postfix creates the queue's subdirectories, not the queue itself.
        os.makedirs(os.path.join(self.base, "queue"), mode=0o755, exist_ok=True)
        data = os.path.join(self.base, "data")
        os.makedirs(data, exist_ok=True)
        pw = pwd.getpwnam("postfix")
        # The master takes its lock there as mail_owner.
        os.chown(data, pw.pw_uid, pw.pw_gid)
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(base=self.base, hostname=MTA_HOSTNAME, fqdn=FQDN,
                                   transport=self.transport, sink_port=self.sink_port))
        extra = ""
        if self.pipe_command:
            extra = PIPE_SERVICE.format(user=PIPE_USER, command=self.pipe_command)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(listen=f"127.0.0.1:{port}", extra=extra))
        with open(os.path.join(self.etc, "tracker_recipients"), "w") as f:
            f.write(RECIPIENTS_REGEXP.lstrip())
        self.port = port

    @property
    def transport(self) -> str:
        if self.pipe_command:
            return "trackermail:"
        return f"lmtp:inet:127.0.0.1:{self.lmtp_port}"

    def start(self, port: int) -> None:
        """
        Start the instance with smtpd on C{port} (blocking: run it in a
        thread).
        """
        self._configure(port)
        # `postfix start` runs `postfix check`, which creates the queue's
        # subdirectories with Postfix's owners and modes.
        result = self._postfix("start")
        if result.returncode != 0:
            self._postfix("abort")
            raise AssertionError("private Postfix did not start: "
                                 + (result.stdout + result.stderr).strip()
                                 + "\n" + self.log())

    def stop(self) -> None:
        """
        Stop the instance and wait (bounded) until its master has exited.
        """
        pid = None
        try:
            with open(os.path.join(self.base, "queue", "pid", "master.pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            pass
        self._postfix("stop")
        deadline = time.monotonic() + 20
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid is not None and _alive(pid):
            self._postfix("abort")

    def log(self) -> str:
        try:
            with open(os.path.join(self.base, "maillog"), errors="replace") as f:
                return f.read()[-6000:]
        except OSError as e:
            return f"(no maillog: {e})"


def _pipe_python() -> str:
    """
    A command line that runs this checkout's Python code as PIPE_USER. The
    test interpreter may live where that user cannot go (a pyenv under
    /root); the system Python 3 of the same minor version can then import
    the same site-packages.

    @raise SkipTest: no interpreter works for PIPE_USER.
    """
    import site

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = ":".join([checkout, *site.getsitepackages()])
    candidates = [sys.executable, f"PYTHONPATH={paths} {sys.executable}"]
    system = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
    if os.path.exists(system):
        candidates.append(f"PYTHONPATH={paths} {system}")
    for candidate in candidates:
        argv = ["/usr/bin/env", *candidate.split(), "-c", "import trackermail.cli"]
        try:
            result = subprocess.run(argv, user=PIPE_USER, cwd="/", capture_output=True,
                                    timeout=60)
        except (OSError, subprocess.SubprocessError):
            continue
        if result.returncode == 0:
            return candidate
    raise SkipTest(f"no Python interpreter that user {PIPE_USER!r} may run imports "
                   "trackermail (the pipe transport runs as that user)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def smtp_send(port: int, sender: str, rcpt: str, data: bytes) -> None:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        client.sendmail(sender, [rcpt], data)
    finally:
        client.quit()


class PostfixRecipeTests(TestCase):
    """
    Mail through a real Postfix to the tracker over LMTP, and back out.
    """

    timeout = 240

    def setUp(self):
        reason = _postfix_missing()
        if reason:
            raise SkipTest(f"SKIPPING real-Postfix tests: {reason}")

    async def eventually(self, predicate, what: str) -> None:
        try:
            await poll(predicate, WAIT, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; Postfix log:\n{self.postfix.log()}")

    async def start_all(self, pipe: bool = False) -> None:
        self.sink = SinkFactory()
        sink_port = listen_local(self, self.sink)
        postfix_port = unused_port()
        # A short path: Postfix's UNIX sockets live under it.
        base = tempfile.mkdtemp(prefix="trackermail-postfix-")
        self.addCleanup(shutil.rmtree, base, True)
        tracker = await start_tracker(
            self, base=base, spool={"rescan_interval": 5},
            outbound={"enabled": True, "smarthost": f"127.0.0.1:{postfix_port}",
                      "connections": 2, "retry_initial": 1, "retry_max": 2})
        # Postfix's daemons run as mail_owner and must traverse it.
        os.chmod(tracker.base, 0o755)
        base, config = tracker.base, tracker.config
        self.postfix = PrivatePostfix(base, sink_port)
        self.top, self.store = tracker.top, tracker.store
        self.postfix.lmtp_port = tracker.ports["lmtp"]
        if pipe:
            self.use_pipe(base, config.spool.path)

        # The port was free a moment ago; Postfix binds it now.
        await deferToThread(self.postfix.start, postfix_port)
        self.addCleanup(deferToThread, self.postfix.stop)

    def use_pipe(self, base: str, spool: str) -> None:
        """
        Route the tracker's domain through `trackermail deliver` run by
        Postfix's pipe(8) as an unprivileged user, who must write the spool.
        """
        for directory, subdirs, _ in os.walk(spool):
            os.chmod(directory, 0o777)
        deliver_config = os.path.join(base, "deliver.toml")
        with open(deliver_config, "w") as f:
            f.write(f'[tracker]\nfqdn = "{FQDN}"\n[spool]\npath = "{spool}"\n')
        self.postfix.pipe_command = (f"{_pipe_python()} -m trackermail.cli "
                                     f"--config {deliver_config}")

    def mails_to(self, rcpt: str) -> list:
        return [(m, email.message_from_bytes(m.data, policy=email.policy.default))
                for m in self.sink.messages if rcpt in m.recipients]

    async def test_control_mail_through_postfix(self):
        """Mail to control@ via Postfix reaches the tracker; its replies leave via Postfix."""
        await self.start_all()
        await self.store.run(add_package, "dpkg")
        request = (f"From: Jane <jane@example.net>\r\nTo: control@{FQDN}\r\n"
                   "Subject: subscribe dpkg\r\nMessage-ID: <pf-req1@example.net>\r\n\r\n"
                   "thanks\r\n").encode()
        await deferToThread(smtp_send, self.postfix.port, "jane@example.net",
                            f"control@{FQDN}", request)
        await self.eventually(lambda: len(self.mails_to("jane@example.net")) >= 2,
                              "the control reply and the CONFIRM mail at the sink")
        received = self.mails_to("jane@example.net")
        subjects = sorted(msg["Subject"] for _, msg in received)
        self.assertEqual(len(subjects), 2, subjects)
        self.assertIn("Re: subscribe dpkg", subjects)
        self.assertTrue(any(s.startswith("CONFIRM ") for s in subjects), subjects)
        for envelope, msg in received:
            self.assertEqual(envelope.recipients, ["jane@example.net"])
            # The outgoing hop: Postfix received it from the tracker.
            hops = [str(h) for h in msg.get_all("Received", [])]
            self.assertTrue(any(f"by {MTA_HOSTNAME} (Postfix)" in h for h in hops), hops)
            self.assertIn(f"control@{FQDN}", str(msg["From"]))
        [(_, reply)] = [(e, m) for e, m in received if m["Subject"] == "Re: subscribe dpkg"]
        self.assertEqual(reply["In-Reply-To"], "<pf-req1@example.net>")

    async def test_dispatch_copy_through_postfix(self):
        """Package mail to dispatch@ via Postfix reaches subscribers via Postfix."""
        await self.start_all()
        await self.store.run(add_package, "dpkg")
        await self.store.run(subscribe, "jane@example.net", "dpkg")
        bug = (b"From: rep@example.org\r\nSubject: Bug#7: dpkg broken\r\n"
               b"Message-ID: <pf-bug7@bugs.example.org>\r\n"
               b"X-Distro-Tracker-Package: dpkg\r\nX-Distro-Tracker-Keyword: bts\r\n"
               b"\r\nbroken\r\n")
        await deferToThread(smtp_send, self.postfix.port, "owner@bugs.example.org",
                            f"dispatch@{FQDN}", bug)
        await self.eventually(lambda: self.mails_to("jane@example.net"),
                              "the forwarded copy at the sink")
        [(envelope, copy)] = self.mails_to("jane@example.net")
        self.assertEqual(envelope.recipients, ["jane@example.net"])
        # Postfix keeps the tracker's VERP return path.
        self.assertTrue(envelope.mail_from.startswith("bounces+"), envelope.mail_from)
        self.assertTrue(envelope.mail_from.endswith(f"@{FQDN}"), envelope.mail_from)
        self.assertEqual(copy["X-Distro-Tracker-Package"], "dpkg")
        self.assertEqual(copy["X-Distro-Tracker-Keyword"], "bts")
        self.assertEqual(copy["X-Loop"], f"dispatch@{FQDN}")
        self.assertEqual(copy["Subject"], "Bug#7: dpkg broken")
        # Two Postfix hops: into the tracker by LMTP, and out of it by SMTP.
        hops = [str(h) for h in copy.get_all("Received", [])]
        self.assertGreaterEqual(
            sum(f"by {MTA_HOSTNAME} (Postfix)" in h for h in hops), 2, hops)

    async def test_unknown_recipient_refused_by_postfix(self):
        """Postfix refuses addresses the tracker would not take, at RCPT TO."""
        await self.start_all()
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as e:
            await deferToThread(smtp_send, self.postfix.port, "a@example.net",
                                f"nobody@{FQDN}", b"Subject: x\r\n\r\nx\r\n")
        code, text = e.exception.recipients[f"nobody@{FQDN}"]
        self.assertEqual(code, 550, text)
        self.assertEqual(self.sink.messages, [])

    async def test_pipe_transport(self):
        """With the pipe recipe, Postfix runs `trackermail deliver` and the copy goes out."""
        try:
            pwd.getpwnam(PIPE_USER)
        except KeyError:
            raise SkipTest(f"no user {PIPE_USER!r} to run the pipe transport as")
        await deferToThread(_pipe_python)
        await self.start_all(pipe=True)
        await self.store.run(add_package, "dpkg")
        await self.store.run(subscribe, "jane@example.net", "dpkg")
        mail = (b"From: dev@example.org\r\nSubject: dpkg 1.22 uploaded\r\n"
                b"Message-ID: <pf-pipe1@example.org>\r\n\r\nnew version\r\n")
        await deferToThread(smtp_send, self.postfix.port, "dev@example.org",
                            f"dispatch+dpkg_upload-source@{FQDN}", mail)
        await self.eventually(lambda: self.mails_to("jane@example.net"),
                              "the forwarded copy at the sink")
        [(envelope, copy)] = self.mails_to("jane@example.net")
        self.assertEqual(copy["X-Distro-Tracker-Package"], "dpkg")
        self.assertEqual(copy["X-Distro-Tracker-Keyword"], "upload-source")
        self.assertTrue(envelope.mail_from.startswith("bounces+"), envelope.mail_from)
        # pipe(8) ran it (postlogd writes the log line asynchronously).
        await self.eventually(lambda: "relay=trackermail, " in self.postfix.log(),
                              "the pipe delivery in the Postfix log")
