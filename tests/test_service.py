"""
The whole tracker service in-process: LMTP in, the store, the outbox sender
out to a loopback SMTP sink. What a user of control@ and dispatch@ sees.
"""

import email
import email.policy
import smtplib
import time

from twisted.internet import reactor, task
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.net import poll
from tests.support.tracker import start_tracker
from trackermail.store.bounce_stats import bounce_stats, record_sent
from trackermail.store.confirmations import create_confirmation, take_confirmation
from trackermail.store.packages import add_package
from trackermail.store.subscriptions import subscribe, subscribers_of

FQDN = "tracker.example.org"


def lmtp_send(port, sender, rcpt, data):
    client = smtplib.LMTP("127.0.0.1", port)
    try:
        client.sendmail(sender, [rcpt], data)
    finally:
        client.quit()


class TrackerServiceTests(TestCase):
    timeout = 120

    async def start_tracker(self):
        tracker = await start_tracker(self, sink=True, spool={"rescan_interval": 5})
        self.top, self.store, self.sink = tracker.top, tracker.store, tracker.sink
        self.lmtp_port = tracker.ports["lmtp"]

    def mails_to(self, rcpt):
        found = []
        for m in self.sink.messages:
            if rcpt in m.recipients:
                found.append(email.message_from_bytes(m.data, policy=email.policy.default))
        return found

    async def test_subscribe_by_mail_and_receive_package_mail(self):
        """A user subscribes by mail, confirms by replying, then gets package mail."""
        await self.start_tracker()
        await self.store.run(add_package, "dpkg")
        request = (b"From: Jane <jane@example.net>\r\nTo: control@tracker.example.org\r\n"
                   b"Subject: subscribe dpkg\r\nMessage-ID: <req1@example.net>\r\n\r\n"
                   b"thanks\r\n")
        await deferToThread(lmtp_send, self.lmtp_port, "jane@example.net",
                            f"control@{FQDN}", request)
        await poll(lambda: len(self.mails_to("jane@example.net")) >= 2,
                   30, "the reply and the CONFIRM mail")
        by_subject = {m["Subject"]: m for m in self.mails_to("jane@example.net")}
        confirm = [m for s, m in by_subject.items() if s.startswith("CONFIRM ")]
        self.assertEqual(len(confirm), 1, sorted(by_subject))
        self.assertIn("Re: subscribe dpkg", by_subject)
        self.assertEqual(await self.store.run(subscribers_of, "dpkg"), [])

        reply = (f"From: jane@example.net\r\nTo: control@{FQDN}\r\n"
                 f"Subject: Re: {confirm[0]['Subject']}\r\n\r\n").encode()
        await deferToThread(lmtp_send, self.lmtp_port, "jane@example.net",
                            f"control@{FQDN}", reply)
        subscribers = []

        async def subscribed():
            subscribers[:] = await self.store.run(subscribers_of, "dpkg")

        deadline = time.monotonic() + 30
        while not subscribers and time.monotonic() < deadline:
            await subscribed()
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(subscribers, ["jane@example.net"])

        bug = (b"From: rep@example.org\r\nSubject: Bug#1: dpkg broken\r\n"
               b"Message-ID: <bug1@bugs.example.org>\r\n"
               b"X-Distro-Tracker-Package: dpkg\r\nX-Distro-Tracker-Keyword: bts\r\n"
               b"\r\nbroken\r\n")
        await deferToThread(lmtp_send, self.lmtp_port, "owner@bugs.example.org",
                            f"dispatch@{FQDN}", bug)
        await poll(lambda: any(m["X-Distro-Tracker-Package"] == "dpkg"
                               for m in self.mails_to("jane@example.net")),
                   30, "the forwarded bug mail")
        [copy] = [m for m in self.sink.messages
                  if m.recipients == ["jane@example.net"] and b"Bug#1" in m.data]
        self.assertTrue(copy.mail_from.startswith("bounces+"))
        self.assertTrue(copy.data.rstrip(b"\r\n").endswith(b"broken"))

    async def test_unknown_recipient_refused_at_rcpt(self):
        """The LMTP server refuses addresses that route nowhere."""
        await self.start_tracker()
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as e:
            await deferToThread(lmtp_send, self.lmtp_port, "a@example.net",
                                f"nobody@{FQDN}", b"Subject: x\r\n\r\nx\r\n")
        self.assertEqual(e.exception.recipients[f"nobody@{FQDN}"][0], 550)


    async def test_one_id_from_reception_to_the_last_copy(self):
        """
        The queue id of the 250 names the message in every log line: queued,
        processed, and each sent batch of its copies.
        """
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        await self.start_tracker()
        for i in range(3):
            await self.store.run(subscribe, f"u{i}@example.net", "dpkg")

        def send():
            client = smtplib.LMTP("127.0.0.1", self.lmtp_port)
            try:
                client.ehlo_or_helo_if_needed()
                client.mail("rep@example.org")
                client.rcpt(f"dispatch+dpkg_bts@{FQDN}")
                return client.data(b"Subject: Bug#2: x\r\n\r\nbody\r\n")
            finally:
                client.quit()

        code, reply = await deferToThread(send)
        queue_id = reply.decode().rsplit(" ", 1)[1]
        self.assertEqual(code, 250)
        await poll(lambda: sum(len(m.recipients) for m in self.sink.messages) >= 3,
                   30, "three copies")
        await poll(lambda: any(e.get("log_format", "").startswith("sent ")
                               and e.get("queue_id") == queue_id for e in events),
                   30, "the sent line")
        formats = {e.get("log_format", "").split(" ")[0] for e in events
                   if e.get("queue_id") == queue_id}
        self.assertTrue({"queued", "processed", "sent"} <= formats, formats)


class MaintenanceServiceTests(SynchronousTestCase):
    def test_hourly_housekeeping(self):
        """The maintenance service purges expired confirmations and trims bounce stats hourly."""
        from tests.support.pipeline import make_config
        from tests.support.stores import make_memory_store
        from trackermail.service import MaintenanceService, StoreService

        store = make_memory_store(self)
        store_service = StoreService(store)
        store_service.startService()
        clock = Clock()
        clock.advance(10 * 86400)
        run = lambda program, *a: self.successResultOf(store.run(program, *a))  # noqa: E731
        run(create_confirmation, "k", "a@example.org", [], 0.0)
        run(subscribe, "a@example.org", "dpkg")
        for day in range(1, 8):
            run(record_sent, ["a@example.org"], f"2026-11-0{day}")
        maintenance = MaintenanceService(
            store_service, make_config(bounces={"max_days_tolerate_soft": 4}), clock)
        maintenance.startService()
        self.addCleanup(maintenance.stopService)
        clock.advance(59)
        self.assertEqual(len(run(bounce_stats, "a@example.org")), 7)
        clock.advance(1)
        self.assertEqual(len(run(bounce_stats, "a@example.org")), 4)
        self.assertEqual(run(take_confirmation, "k", clock.seconds(), 86400.0), "unknown")
        run(record_sent, ["a@example.org"], "2026-11-08")
        clock.advance(3600)
        self.assertEqual(len(run(bounce_stats, "a@example.org")), 4)


class BigMessageTests(TestCase):
    timeout = 60

    async def test_big_message_is_parsed_off_the_reactor_thread(self):
        """A message over the threshold is parsed in a thread and still processed."""
        import threading

        from tests.support.pipeline import make_pipeline
        from trackermail import processing

        processor, store, clock = make_pipeline(self)
        processor.thread_parse_over = 1000
        threads = []
        real_parse = processing.parse_message

        def spy(raw):
            threads.append(threading.current_thread() is threading.main_thread())
            return real_parse(raw)

        self.patch(processing, "parse_message", spy)
        await store.run(subscribe, "a@example.org", "dpkg")
        raw = (b"Delivered-To: dispatch+dpkg_bts@tracker.example.org\r\n"
               b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n")
        outcome = await processor.process_bytes(raw)
        self.assertEqual((outcome.action, threads), ("forwarded", [False]))
