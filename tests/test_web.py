"""
The HTTP side: one-click unsubscribe pages, /metrics and /healthz, as a
subscriber's mail client, a link scanner and an operator's monitoring see
them.
"""

import os
from urllib.parse import urlencode

from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from tests.support.pipeline import (
    FQDN,
    deliver,
    make_config,
    make_pipeline,
    outbox,
    parse,
)
from tests.support.stores import make_memory_store
from tests.support.tracker import start_tracker
from trackermail import metrics, web
from trackermail.config import config_from_dict
from trackermail.errors import StoreUnavailable
from trackermail.ingress.spool import Spool
from trackermail.service import buildService
from trackermail.store.outbox import enqueue
from trackermail.store.subscriptions import (
    subscribe,
    subscribers_of,
    subscriptions_of,
    unsubscribe,
    unsubscribe_token,
)

NOW = 1_795_000_000
DAY = 86400


def counter(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class HangingStore:
    """A store whose programs never finish (a database that stopped answering)."""

    def __init__(self):
        self.calls = []

    def run(self, program, *args):
        d = Deferred()
        self.calls.append((program, args, d))
        return d


class FixedStore:
    """A store whose every program fires with the same value."""

    def __init__(self, value):
        self.value = value

    def run(self, program, *args):
        return defer.succeed(self.value)


class FailingStore:
    def __init__(self, error):
        self.error = error

    def run(self, program, *args):
        return defer.fail(self.error)


class WebTestMixin:
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = make_memory_store(self)
        self.config = make_config()
        self.secret = self.config.tracker.secret_key
        self.spool_dir = self.mktemp()
        Spool(self.spool_dir, fsync=False)
        self.db(subscribe, "jane@example.net", "dpkg")
        self.db(subscribe, "jane@example.net", "apt")
        self.db(subscribe, "joe@example.net", "dpkg")

    def db(self, program, *args):
        return self.successResultOf(self.store.run(program, *args))

    def root(self, store=None, ready=None, config=None):
        return web.make_resource(config or self.config, store or self.store,
                                 self.spool_dir, self.clock, ready)

    def token(self, package="dpkg", email="jane@example.net"):
        """The unsubscribe token of a current subscription, as its copies carry it."""
        return self.db(unsubscribe_token, self.secret, email, package)

    def request(self, path, method=b"GET", args=None, root=None, headers=()):
        """Render C{path} on the tree; returns the DummyRequest (maybe unfinished)."""
        req = DummyRequest(path.lstrip(b"/").split(b"/"))
        req.method = method
        req.args = dict(args or {})
        for name, value in headers:
            req.requestHeaders.addRawHeader(name, value)
        resource = getChildForRequest(root or self.root(), req)
        req.render(resource)
        return req

    def body(self, req) -> str:
        return b"".join(req.written).decode("utf-8")

    def header(self, req, name):
        values = req.responseHeaders.getRawHeaders(name)
        return values[-1] if values else None

    def subscribed(self, email="jane@example.net"):
        return self.db(subscriptions_of, email)


class UnsubscribePageTests(WebTestMixin, SynchronousTestCase):
    def test_get_shows_a_button_and_changes_nothing(self):
        """Opening the link (or a link scanner fetching it) shows a button, nothing more."""
        req = self.request(b"/unsubscribe/" + self.token().encode())
        self.assertTrue(req.finished)
        self.assertEqual(req.responseCode, 200)
        text = self.body(req)
        self.assertIn("dpkg", text)
        self.assertIn("jane@example.net", text)
        self.assertIn('<form method="post">', text)
        self.assertIn('name="List-Unsubscribe" value="One-Click"', text)
        self.assertIn("<button", text)
        self.assertEqual(self.subscribed(), ["apt", "dpkg"])
        self.assertEqual(self.header(req, b"content-type"), b"text/html; charset=utf-8")
        self.assertEqual(self.header(req, b"cache-control"), b"no-store")
        self.assertEqual(self.header(req, b"referrer-policy"), b"no-referrer")
        self.assertIn(b"frame-ancestors 'none'",
                      self.header(req, b"content-security-policy"))

    def test_one_click_post_unsubscribes(self):
        """The RFC 8058 POST removes that address from that package only."""
        before = counter("trackermail_unsubscribed_by_link_total")
        req = self.request(b"/unsubscribe/" + self.token().encode(), b"POST",
                           {b"List-Unsubscribe": [b"One-Click"]})
        self.assertTrue(req.finished)
        self.assertEqual(req.responseCode, 200)
        self.assertIn("will no longer receive mail", self.body(req))
        self.assertEqual(self.subscribed(), ["apt"])
        self.assertEqual(self.db(subscribers_of, "dpkg"), ["joe@example.net"])
        self.assertEqual(counter("trackermail_unsubscribed_by_link_total"), before + 1)

    def test_plain_form_post_unsubscribes(self):
        """A POST without the one-click body (a plain form) works as well."""
        req = self.request(b"/unsubscribe/" + self.token().encode(), b"POST")
        self.assertEqual(req.responseCode, 200)
        self.assertEqual(self.subscribed(), ["apt"])

    def test_second_post_says_the_link_no_longer_works(self):
        """Clicking twice is harmless: the second time says the link no longer works."""
        path = b"/unsubscribe/" + self.token().encode()
        self.request(path, b"POST")
        req = self.request(path, b"POST")
        self.assertEqual(req.responseCode, 410)
        self.assertIn("no longer works", self.body(req))
        self.assertEqual(self.subscribed(), ["apt"])

    def test_link_dies_with_its_subscription(self):
        """After unsubscribing and subscribing again, the old link does nothing; the new one works."""
        old = b"/unsubscribe/" + self.token().encode()
        self.db(unsubscribe, "jane@example.net", "dpkg")
        self.db(subscribe, "jane@example.net", "dpkg")
        for method in (b"GET", b"POST"):
            req = self.request(old, method)
            self.assertEqual(req.responseCode, 410, method)
        self.assertEqual(self.subscribed(), ["apt", "dpkg"])
        req = self.request(b"/unsubscribe/" + self.token().encode(), b"POST")
        self.assertEqual(req.responseCode, 200)
        self.assertEqual(self.subscribed(), ["apt"])

    def test_link_does_not_expire(self):
        """A link keeps working as long as its subscription lasts, a year later too."""
        token = self.token()
        self.clock.advance(365 * DAY)
        req = self.request(b"/unsubscribe/" + token.encode(), b"POST")
        self.assertEqual(req.responseCode, 200)
        self.assertEqual(self.subscribed(), ["apt"])

    def assertRefused(self, path, code, text):
        for method in (b"GET", b"POST"):
            req = self.request(path, method, {b"List-Unsubscribe": [b"One-Click"]})
            self.assertTrue(req.finished)
            self.assertEqual(req.responseCode, code, (method, path))
            self.assertIn(text, self.body(req))
        self.assertEqual(self.subscribed(), ["apt", "dpkg"])
        self.assertEqual(self.subscribed("joe@example.net"), ["dpkg"])

    def test_tampered_token_refused(self):
        """A token changed on its way changes nothing: 400 when malformed, 410 otherwise."""
        token = self.token()
        sid, mac = token.split(".")
        joe = self.token(email="joe@example.net")
        altered = mac[:-1] + ("A" if mac[-1] != "A" else "B")
        for bad in (f"{sid}.{altered}", f"{joe.split('.')[0]}.{mac}",
                    f"{int(sid) + 100}.{mac}"):
            self.assertRefused(b"/unsubscribe/" + bad.encode(), 410, "no longer works")
        for bad in (token[:-2], "garbage", "a.b.c", token + "x"):
            self.assertRefused(b"/unsubscribe/" + bad.encode(), 400, "not valid")

    def test_token_of_another_secret_refused(self):
        """A token made with another tracker's secret does nothing here."""
        token = self.db(unsubscribe_token, "someone-else-0123456789", "jane@example.net",
                        "dpkg")
        self.assertRefused(b"/unsubscribe/" + token.encode(), 410, "no longer works")

    def test_malformed_paths_refused(self):
        """No token, an empty token, odd bytes or extra path segments: a 400 page."""
        token = self.token().encode()
        for path in (b"/unsubscribe", b"/unsubscribe/", b"/unsubscribe/\xff\xfe",
                     b"/unsubscribe/" + token + b"/extra",
                     b"/unsubscribe/" + b"1" * 10000 + b"." + b"B" * 22):
            req = self.request(path)
            self.assertEqual(req.responseCode, 400, path[:40])
        req = self.request(b"/unsubscribe/" + token + b"/x", b"POST")
        self.assertEqual(req.responseCode, 400)
        self.assertEqual(self.subscribed(), ["apt", "dpkg"])

    def test_everything_shown_is_escaped(self):
        """Markup in what the store holds is shown as text, never as HTML."""
        hostile = ('"><script>x()</script>@example.org', "<b>p&q</b>")
        store = FixedStore(hostile)
        for method in (b"GET", b"POST"):
            req = self.request(b"/unsubscribe/" + self.token().encode(), method,
                               root=self.root(store=store))
            self.assertEqual(req.responseCode, 200)
            text = self.body(req)
            self.assertNotIn("<script>", text)
            self.assertNotIn("<b>p", text)
            self.assertIn("&lt;script&gt;", text)
            self.assertIn("&lt;b&gt;p&amp;q&lt;/b&gt;", text)

    def test_post_before_the_store_is_ready(self):
        """While the database is starting, opening or clicking gets 503 and nothing changes."""
        for method in (b"GET", b"POST"):
            req = self.request(b"/unsubscribe/" + self.token().encode(), method,
                               root=self.root(ready=Deferred))
            self.assertEqual(req.responseCode, 503)
            self.assertEqual(self.header(req, b"retry-after"), b"60")
        self.assertEqual(self.subscribed(), ["apt", "dpkg"])

    def test_store_unavailable_gives_503(self):
        """A database that is down answers the click with 503 (try again later)."""
        root = self.root(store=FailingStore(StoreUnavailable("PostgreSQL: gone")))
        req = self.request(b"/unsubscribe/" + self.token().encode(), b"POST", root=root)
        self.assertEqual(req.responseCode, 503)
        self.assertIn("try again", self.body(req))

    def test_unexpected_error_gives_500_and_is_logged(self):
        """A bug answers 500 with a plain page (no traceback) and is logged."""
        root = self.root(store=FailingStore(RuntimeError("boom <secret>")))
        req = self.request(b"/unsubscribe/" + self.token().encode(), b"POST", root=root)
        self.assertEqual(req.responseCode, 500)
        self.assertNotIn("boom", self.body(req))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_slow_store_times_out_with_503(self):
        """A store that does not answer within 30 s gets a 503 page."""
        store = HangingStore()
        req = self.request(b"/unsubscribe/" + self.token().encode(), b"POST",
                           root=self.root(store=store))
        self.assertFalse(req.finished)
        self.clock.advance(web.WRITE_TIMEOUT)
        self.assertTrue(req.finished)
        self.assertEqual(req.responseCode, 503)
        # The late answer of the store is consumed quietly.
        store.calls[0][2].callback(True)

    def test_client_gone_before_answer(self):
        """A client that hangs up before the store answers gets nothing written, no error."""
        store = HangingStore()
        req = self.request(b"/unsubscribe/" + self.token().encode(), b"POST",
                           root=self.root(store=store))
        req.processingFailed(Failure(ConnectionError("gone")))
        store.calls[0][2].callback(("jane@example.net", "dpkg"))
        self.assertEqual(req.written, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_root_and_unknown_paths(self):
        """/ names the tracker; unknown paths are 404 pages."""
        req = self.request(b"/")
        self.assertEqual(req.responseCode, 200)
        self.assertIn(FQDN, self.body(req))
        req = self.request(b"/nothing/here")
        self.assertEqual(req.responseCode, 404)


class ForwardedCopyLinkTests(SynchronousTestCase):
    def test_link_in_a_forwarded_copy_works(self):
        """The List-Unsubscribe URL of a forwarded copy, POSTed, ends that subscription."""
        processor, store, fake = make_pipeline(
            self, http={"public_url": "https://tracker.example.org/"})
        store.run(subscribe, "alice@example.org", "dpkg")
        store.run(subscribe, "alice@example.org", "apt")
        deliver(self, processor, f"dispatch@{FQDN}",
                b"From: rep@example.net\r\nSubject: Bug#1: dpkg\r\n"
                b"X-Distro-Tracker-Package: dpkg\r\nX-Distro-Tracker-Keyword: bts\r\n"
                b"\r\nbroken\r\n")
        [(rcpt, _, data)] = outbox(self, store)
        copy = parse(data)
        self.assertEqual(copy["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click")
        url, mailto = [part.strip("<> ") for part in copy["List-Unsubscribe"].split(",")]
        prefix = "https://tracker.example.org/unsubscribe/"
        self.assertTrue(url.startswith(prefix), url)
        # One token for both ways out of the list.
        self.assertEqual(mailto, f"mailto:control@{FQDN}?subject=unsubscribe%20dpkg%20"
                                 + url[len(prefix):])
        clock = Clock()
        clock.advance(fake.now + 10 * DAY)
        spool = self.mktemp()
        Spool(spool, fsync=False)
        root = web.make_resource(processor.config, store, spool, clock)
        req = DummyRequest([b"unsubscribe", url[len(prefix):].encode()])
        req.method = b"POST"
        req.args = {b"List-Unsubscribe": [b"One-Click"]}
        req.render(getChildForRequest(root, req))
        self.assertEqual(req.responseCode, 200)
        self.assertEqual(self.successResultOf(store.run(subscriptions_of,
                                                        "alice@example.org")), ["apt"])


class MetricsEndpointTests(WebTestMixin, SynchronousTestCase):
    def test_metrics_in_prometheus_text(self):
        """/metrics serves the counters and the spool and outbox gauges as Prometheus text."""
        spool = Spool(self.spool_dir, fsync=False)
        spool.deliver_sync(b"Subject: x\r\n\r\nx\r\n", f"dispatch@{FQDN}", "a@example.net")
        self.db(enqueue, b"Subject: y\r\n\r\ny\r\n",
                 [("a@example.org", ""), ("b@example.org", "")], NOW - 100)
        self.clock.advance(20)
        req = self.request(b"/metrics")
        self.assertTrue(req.finished)
        self.assertEqual(req.responseCode, 200)
        self.assertEqual(self.header(req, b"content-type"),
                         b"text/plain; version=0.0.4; charset=utf-8")
        text = self.body(req)
        self.assertIn('trackermail_spool_messages{state="new"} 1.0\n', text)
        self.assertIn('trackermail_spool_messages{state="failed"} 0.0\n', text)
        self.assertIn('trackermail_spool_messages{state="broken"} 0.0\n', text)
        self.assertIn('trackermail_outbox_deliveries{state="queued"} 2.0\n', text)
        self.assertIn("trackermail_outbox_oldest_due_age_seconds 120.0\n", text)
        self.assertIn("trackermail_store_up 1.0\n", text)
        for name in ("# TYPE trackermail_messages_received_total counter",
                     "# TYPE trackermail_processing_seconds histogram",
                     'trackermail_deliveries_total{result="sent"}',
                     "trackermail_bounces_counted_total",
                     "trackermail_confirmations_sent_total",
                     "trackermail_unsubscribed_by_bounce_total"):
            self.assertIn(name, text)

    def test_openmetrics_on_request(self):
        """A scraper asking for OpenMetrics gets it."""
        req = self.request(b"/metrics", headers=[
            (b"Accept", b"application/openmetrics-text; version=1.0.0")])
        self.assertTrue(self.header(req, b"content-type").startswith(
            b"application/openmetrics-text"))
        self.assertTrue(self.body(req).endswith("# EOF\n"))

    def test_store_down_still_serves_metrics(self):
        """When the database does not answer, /metrics still answers, with store_up 0."""
        req = self.request(b"/metrics", root=self.root(store=HangingStore()))
        self.assertFalse(req.finished)
        self.clock.advance(web.STORE_TIMEOUT)
        self.assertEqual(req.responseCode, 200)
        text = self.body(req)
        self.assertIn("trackermail_store_up 0.0\n", text)
        self.assertNotIn("trackermail_outbox_deliveries", text)
        self.assertIn('trackermail_spool_messages{state="new"} 0.0', text)


class HealthTests(WebTestMixin, SynchronousTestCase):
    def test_healthy(self):
        """/healthz answers 200 ok when the store answers and the spool is writable."""
        req = self.request(b"/healthz")
        self.assertEqual(req.responseCode, 200)
        self.assertEqual(self.body(req), "ok\n")
        self.assertEqual(os.listdir(os.path.join(self.spool_dir, "tmp")), [])

    def test_store_down(self):
        """A failing store makes /healthz 503 with the reason."""
        root = self.root(store=FailingStore(StoreUnavailable("PostgreSQL: connection refused")))
        req = self.request(b"/healthz", root=root)
        self.assertEqual(req.responseCode, 503)
        self.assertEqual(self.body(req), "store: PostgreSQL: connection refused\n")

    def test_store_hanging(self):
        """A store that does not answer in 5 s makes /healthz 503."""
        req = self.request(b"/healthz", root=self.root(store=HangingStore()))
        self.assertFalse(req.finished)
        self.clock.advance(web.STORE_TIMEOUT)
        self.assertEqual(req.responseCode, 503)
        self.assertIn("store: no answer within 5 s", self.body(req))

    def test_store_not_ready(self):
        """While the store is starting, /healthz says so with 503."""
        ready = Deferred()
        root = self.root(ready=lambda: ready)
        req = self.request(b"/healthz", root=root)
        self.assertEqual(req.responseCode, 503)
        self.assertIn("store: not ready", self.body(req))
        ready.callback(self.store)
        self.assertEqual(self.request(b"/healthz", root=root).responseCode, 200)

    def test_spool_not_writable(self):
        """A spool whose tmp/ cannot take files makes /healthz 503 naming the spool."""
        tmp = os.path.join(self.spool_dir, "tmp")
        os.rmdir(tmp)
        with open(tmp, "w") as f:  # a file where the directory should be
            f.write("x")
        req = self.request(b"/healthz")
        self.assertEqual(req.responseCode, 503)
        self.assertIn("spool: cannot create a file in", self.body(req))


@implementer(IBodyProducer)
class _Body:
    def __init__(self, data: bytes):
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return defer.succeed(None)

    def stopProducing(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


class LoopbackTests(TestCase):
    """The HTTP service of a whole tracker, over a real loopback socket."""

    timeout = 60

    async def start_tracker(self):
        tracker = await start_tracker(
            self, spool={"fsync": False}, lmtp={"listen": []},
            http={"listen": ["tcp:0:interface=127.0.0.1"], "public_url": "http://127.0.0.1"})
        self.top, self.store = tracker.top, tracker.store
        self.secret = tracker.config.tracker.secret_key
        self.base = f"http://127.0.0.1:{tracker.ports['http']}".encode()
        self.agent = Agent(reactor)
        await self.store.run(subscribe, "jane@example.net", "dpkg")

    async def fetch(self, path, method=b"GET", body=None, content_type=None):
        headers = Headers()
        if content_type:
            headers.addRawHeader(b"Content-Type", content_type)
        response = await self.agent.request(method, self.base + path, headers,
                                            _Body(body) if body is not None else None)
        data = await readBody(response)
        return response, data

    async def link(self):
        token = await self.store.run(unsubscribe_token, self.secret, "jane@example.net",
                                     "dpkg")
        return b"/unsubscribe/" + token.encode()

    async def test_get_head_then_one_click_post(self):
        """Over HTTP: GET and HEAD change nothing; the RFC 8058 POST unsubscribes."""
        await self.start_tracker()
        link = await self.link()
        response, data = await self.fetch(link)
        self.assertEqual(response.code, 200)
        self.assertIn(b"<button", data)
        response, data = await self.fetch(link, b"HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual(data, b"")
        self.assertEqual(await self.store.run(subscribers_of, "dpkg"), ["jane@example.net"])
        response, data = await self.fetch(link, b"POST", b"List-Unsubscribe=One-Click",
                                          b"application/x-www-form-urlencoded")
        self.assertEqual(response.code, 200)
        self.assertIn(b"will no longer receive mail", data)
        self.assertEqual(await self.store.run(subscribers_of, "dpkg"), [])

    async def test_multipart_one_click_post(self):
        """RFC 8058 also allows multipart/form-data: that unsubscribes too."""
        await self.start_tracker()
        body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n"
                b"One-Click\r\n--XyZ--\r\n")
        response, data = await self.fetch(await self.link(), b"POST", body,
                                          b"multipart/form-data; boundary=XyZ")
        self.assertEqual(response.code, 200)
        self.assertEqual(await self.store.run(subscribers_of, "dpkg"), [])

    async def test_bad_token_over_http(self):
        """Over HTTP a forged link gets a 410 page and nothing changes."""
        await self.start_tracker()
        link = await self.link()
        forged = link[:-3] + (b"AAA" if not link.endswith(b"AAA") else b"BBB")
        response, data = await self.fetch(forged, b"POST",
                                          urlencode({"List-Unsubscribe": "One-Click"}).encode(),
                                          b"application/x-www-form-urlencoded")
        self.assertEqual(response.code, 410)
        self.assertEqual(await self.store.run(subscribers_of, "dpkg"), ["jane@example.net"])

    async def test_metrics_and_health_over_http(self):
        """Over HTTP /metrics is Prometheus text and /healthz says ok."""
        await self.start_tracker()
        response, data = await self.fetch(b"/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/plain; version=0.0.4; charset=utf-8"])
        self.assertIn(b"trackermail_store_up 1.0\n", data)
        self.assertIn(b'trackermail_outbox_deliveries{state="queued"} 0.0\n', data)
        response, data = await self.fetch(b"/healthz")
        self.assertEqual((response.code, data), (200, b"ok\n"))
        response, data = await self.fetch(b"/nothing")
        self.assertEqual(response.code, 404)

    async def test_http_off_when_not_configured(self):
        """Without [http] listen the tracker has no HTTP service."""
        base = os.path.abspath(self.mktemp())
        config = config_from_dict({
            "tracker": {"fqdn": FQDN, "secret_key": "s" * 40},
            "spool": {"path": os.path.join(base, "spool")},
            "database": {"url": "sqlite:///:memory:"},
            "smtp": {"listen": []}, "lmtp": {"listen": []},
            "outbound": {"enabled": False},
        })
        top = buildService(config, reactor)
        self.assertEqual([s.name for s in top if (s.name or "").startswith("http:")], [])
        await task.deferLater(reactor, 0, lambda: None)
