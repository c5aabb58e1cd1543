# -*- test-case-name: tests.test_web -*-
"""
The tracker's HTTP side (C{[http] listen}): one-click unsubscribe, metrics
and a health check, as twisted.web resources.

  - C{GET /unsubscribe/TOKEN} shows what the link is for and a button; it
    changes nothing, because link scanners and previews fetch every URL of
    a mail. C{POST /unsubscribe/TOKEN} (RFC 8058's C{List-Unsubscribe=One-Click}
    body sent by mail providers, or the page's button) ends the subscription
    the token was made for (L{trackermail.signing}). A malformed token gets a
    400 page; an altered one, or one whose subscription has ended (even if
    the address subscribed again since), a 410 page; neither changes
    anything.
  - C{GET /metrics}: Prometheus text (or OpenMetrics when asked for); see
    L{trackermail.metrics}.
  - C{GET /healthz}: C{200 ok} when the store answers and the spool can
    take a message of the maximum size; C{503} and the reasons otherwise.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.application.service import IService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from trackermail import metrics
from trackermail.endpoints import ListeningService
from trackermail.errors import TemporaryFailure
from trackermail.ingress.spool import writable_problem
from trackermail.signing import InvalidToken, parse_subscription_token
from trackermail.store.ledger import ping
from trackermail.store.outbox_report import outbox_summary
from trackermail.store.subscriptions import token_subscription, unsubscribe_by_token

log = Logger()

# How long a read for /healthz or /metrics may take before the answer says
# the store is not answering (the read itself is left to finish).
STORE_TIMEOUT = 5.0
# How long an unsubscription may take before the page asks to try again.
WRITE_TIMEOUT = 30.0

_HTML_HEADERS = (
    (b"Content-Type", b"text/html; charset=utf-8"),
    (b"Cache-Control", b"no-store"),
    # The token names the address: it must not leak to other sites.
    (b"Referrer-Policy", b"no-referrer"),
    (b"X-Robots-Tag", b"noindex, nofollow"),
    (b"X-Content-Type-Options", b"nosniff"),
    # No scripts at all, and no framing (a framed button invites clickjacking).
    (b"Content-Security-Policy",
     b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'"),
    (b"X-Frame-Options", b"DENY"),
)

_STYLE = (
    "body{font-family:sans-serif;max-width:36em;margin:3em auto;padding:0 1em;"
    "line-height:1.5;color:#222}"
    "button{font-size:1.1em;padding:.4em 1.2em;cursor:pointer}"
    "code{background:#f2f2f2;padding:0 .2em}"
)


@dataclass(frozen=True)
class Response:
    """What a resource answers: status, body and extra headers."""

    code: int
    body: bytes
    content_type: bytes | None = None  # None: an HTML page
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def page(code: int, title: str, paragraphs_html: list[str],
         headers: tuple[tuple[bytes, bytes], ...] = ()) -> Response:
    """
    An HTML page. C{title} is escaped here; C{paragraphs_html} must already
    be escaped (build them with L{_e}).
    """
    text = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>{_e(title)}</h1>\n" + "\n".join(paragraphs_html) + "\n</body></html>\n"
    )
    # A signed token may still carry lone surrogates (JSON escapes): show a
    # replacement character rather than fail.
    return Response(code, text.encode("utf-8", "replace"), None, headers)


def text_response(code: int, text: str, headers=()) -> Response:
    return Response(code, text.encode("utf-8", "replace"),
                    b"text/plain; charset=utf-8", ((b"Cache-Control", b"no-store"),) + headers)


def _send(request, response: Response) -> bytes:
    request.setResponseCode(response.code)
    if response.content_type is None:
        for name, value in _HTML_HEADERS:
            request.setHeader(name, value)
    else:
        request.setHeader(b"Content-Type", response.content_type)
    for name, value in response.headers:
        request.setHeader(name, value)
    return response.body


def _server_error() -> Response:
    return page(500, "Something went wrong", [
        "<p>The tracker could not answer this request. The error was logged;"
        " please try again later.</p>"])


def _unavailable(reason: str) -> Response:
    return page(503, "Temporarily unavailable", [
        f"<p>The tracker cannot do this right now ({_e(reason)}). Nothing was"
        " changed; please try again in a few minutes.</p>"],
        headers=((b"Retry-After", b"60"),))


def answer_later(request, work: Deferred, what: str,
                 on_error: Callable[[], Response] = _server_error) -> Any:
    """
    Finish C{request} with the L{Response} C{work} fires with. A failure is
    logged with its traceback and answered with C{on_error()}. Nothing is
    written once the client has gone away. Returns C{NOT_DONE_YET} for
    C{render_*}.
    """
    gone = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def failed(failure):
        log.failure("{what} failed", failure, what=what)
        return on_error()

    def write(response: Response):
        if gone:
            return
        body = _send(request, response)
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    work.addErrback(failed).addCallback(write)
    work.addErrback(lambda f: log.failure("answering {what} failed", f, what=what))
    return server.NOT_DONE_YET


def within(d: Deferred, seconds: float, clock) -> Deferred:
    """
    C{d}'s result, or a L{defer.TimeoutError} after C{seconds}. Unlike
    C{addTimeout} it does not cancel C{d}: a store transaction is left to
    finish or fail on its own.
    """
    result: Deferred = Deferred()

    def timed_out():
        if not result.called:
            result.errback(defer.TimeoutError(f"no answer within {seconds:g} s"))

    timer = clock.callLater(seconds, timed_out)

    def settle(outcome):
        if timer.active():
            timer.cancel()
        if not result.called:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
        # A late failure was already answered by the timeout: consume it.
        return None

    d.addBoth(settle)
    return result


class Readiness:
    """
    Whether the store can be used yet: C{ready()} (the store service's
    C{when_ready}) is asked once; None means always ready.
    """

    def __init__(self, ready: Callable[[], Deferred] | None):
        self.is_ready = ready is None
        if ready is not None:
            d = ready()
            d.addCallback(self._became_ready)
            d.addErrback(lambda f: log.failure("waiting for the store failed", f))

    def _became_ready(self, _):
        self.is_ready = True


def _describe(failure_or_error) -> str:
    error = getattr(failure_or_error, "value", failure_or_error)
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


# ---------------------------------------------------------------------------
# One-click unsubscribe


class UnsubscribeResource(Resource):
    """C{/unsubscribe}: its children are the tokens."""

    def __init__(self, site: "TrackerSite"):
        super().__init__()
        self.tracker = site

    def getChild(self, path: bytes, request):
        return UnsubscribeLink(self.tracker, path)

    def render_GET(self, request):
        return _send(request, self.tracker.bad_link("no token in the link"))


class UnsubscribeLink(Resource):
    """C{/unsubscribe/TOKEN}."""

    isLeaf = True

    def __init__(self, site: "TrackerSite", token: bytes):
        super().__init__()
        self.tracker = site
        self.token = token

    def _check(self, request) -> str | Response:
        if request.postpath:
            return self.tracker.bad_link("extra path after the token")
        try:
            token = self.token.decode("ascii")
        except UnicodeDecodeError:
            return self.tracker.bad_link("the token is not ASCII")
        return self.tracker.check_token(token)

    def _answer(self, request, work, what: str):
        checked = self._check(request)
        if isinstance(checked, Response):
            return _send(request, checked)
        if not self.tracker.readiness.is_ready:
            return _send(request, _unavailable("the database is not ready yet"))
        return answer_later(request, Deferred.fromCoroutine(work(checked)), what)

    def render_GET(self, request):
        return self._answer(request, self.tracker.confirm_page, "unsubscribe page")

    def render_POST(self, request):
        one_click = request.args.get(b"List-Unsubscribe") == [b"One-Click"]
        return self._answer(request, lambda token: self.tracker.unsubscribe(token, one_click),
                            "one-click unsubscribe")


# ---------------------------------------------------------------------------
# Metrics and health


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, site: "TrackerSite"):
        super().__init__()
        self.tracker = site

    def render_GET(self, request):
        accept = request.getHeader(b"accept")
        accept = accept.decode("latin-1") if accept else ""
        work = Deferred.fromCoroutine(self.tracker.scrape(accept))
        return answer_later(request, work, "metrics scrape",
                            on_error=lambda: text_response(500, "metrics failed\n"))


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, site: "TrackerSite"):
        super().__init__()
        self.tracker = site

    def render_GET(self, request):
        work = Deferred.fromCoroutine(self.tracker.health())
        return answer_later(request, work, "health check",
                            on_error=lambda: text_response(503, "health check failed\n"))


class RootResource(Resource):
    def __init__(self, site: "TrackerSite"):
        super().__init__()
        self.tracker = site

    def getChild(self, path, request):
        if path == b"":
            return self
        return _NotFound()

    def render_GET(self, request):
        return _send(request, text_response(
            200, f"trackermail for {self.tracker.config.tracker.fqdn}\n"))


class _NotFound(Resource):
    isLeaf = True

    def render(self, request):
        return _send(request, page(404, "Not found", ["<p>There is nothing here.</p>"]))


class TrackerSite:
    """
    What the resources do, apart from HTTP: token checks, the
    unsubscription, the scrape and the health check.
    """

    def __init__(self, config, store, spool, clock, ready=None):
        self.config = config
        self.store = store
        self.spool_path = getattr(spool, "path", spool)
        self.clock = clock
        self.readiness = Readiness(ready)

    # -- unsubscribe -------------------------------------------------------

    def _mail_hint(self, package: str | None = None) -> str:
        control = f"control@{self.config.tracker.fqdn}"
        command = f"unsubscribe {package}" if package else "unsubscribe PACKAGE"
        return (f"<p>You can also unsubscribe by mail: write <code>{_e(command)}</code>"
                f" to <a href=\"mailto:{_e(control)}\">{_e(control)}</a> from the"
                " subscribed address, and answer the confirmation.</p>")

    def bad_link(self, reason: str) -> Response:
        return page(400, "This unsubscribe link is not valid", [
            "<p>The link may have been cut or changed on its way. Nothing was"
            " changed.</p>", self._mail_hint()])

    def gone_link(self) -> Response:
        return page(410, "This unsubscribe link no longer works", [
            "<p>The subscription it was made for has ended already (a link"
            " stops working when its subscription ends, even if the address"
            " subscribed again later), or the link was changed on its way."
            " Nothing was changed. Each mail about a package brings a link of"
            " its own.</p>", self._mail_hint()])

    def check_token(self, token: str) -> str | Response:
        """The token when it is shaped like one, else the page refusing it."""
        try:
            parse_subscription_token(token)
        except InvalidToken as e:
            log.info("invalid unsubscribe link: {reason}", reason=str(e))
            return self.bad_link(str(e))
        return token

    async def _store(self, program, *args):
        return await within(self.store.run(program, *args), WRITE_TIMEOUT, self.clock)

    async def confirm_page(self, token: str) -> Response:
        try:
            found = await self._store(token_subscription, self.config.tracker.secret_key,
                                      token)
        except (TemporaryFailure, defer.TimeoutError) as e:
            log.warn("cannot look up an unsubscribe link: {error}", error=_describe(e))
            return _unavailable("the database did not answer")
        if found is None:
            log.info("unsubscribe link for no current subscription (page)")
            return self.gone_link()
        email, package = found
        return page(200, f"Unsubscribe from {package}", [
            f"<p>Stop sending mail about the package <strong>{_e(package)}</strong>"
            f" to <strong>{_e(email)}</strong>?</p>",
            "<form method=\"post\">"
            "<input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">"
            "<button type=\"submit\" id=\"unsubscribe\">Unsubscribe</button></form>",
            self._mail_hint(package)])

    async def unsubscribe(self, token: str, one_click: bool) -> Response:
        fqdn = self.config.tracker.fqdn
        how = "one-click" if one_click else "form"
        try:
            removed = await self._store(unsubscribe_by_token,
                                        self.config.tracker.secret_key, token)
        except (TemporaryFailure, defer.TimeoutError) as e:
            log.warn("cannot unsubscribe by link: {error}", error=_describe(e))
            return _unavailable("the database did not answer")
        if removed is None:
            log.info("unsubscribe link for no current subscription ({how})", how=how)
            return self.gone_link()
        email, package = removed
        metrics.unsubscribed_by_link()
        log.info("unsubscribed {email} from {package} by link ({how})",
                 email=email, package=package, how=how)
        control = f"control@{fqdn}"
        return page(200, "Unsubscribed", [
            f"<p><strong>{_e(email)}</strong> will no longer receive mail"
            f" about <strong>{_e(package)}</strong> from {_e(fqdn)}.</p>",
            f"<p>To subscribe again, write <code>subscribe {_e(package)}</code> to"
            f" <a href=\"mailto:{_e(control)}\">{_e(control)}</a>.</p>"])

    # -- metrics -------------------------------------------------------------

    async def scrape(self, accept: str = "") -> Response:
        now = self.clock.seconds()
        spool = metrics.spool_depth(self.spool_path)
        outbox = None
        if self.readiness.is_ready:
            try:
                outbox = await within(self.store.run(outbox_summary, now),
                                      STORE_TIMEOUT, self.clock)
            except Exception as e:
                log.warn("metrics: the store did not answer: {error}", error=_describe(e))
        body, content_type = metrics.render(metrics.StateSnapshot(spool, outbox, now), accept)
        return Response(200, body, content_type.encode("ascii"),
                        ((b"Cache-Control", b"no-store"),))

    # -- health --------------------------------------------------------------

    async def health(self) -> Response:
        problems = []
        if not self.readiness.is_ready:
            problems.append("store: not ready (starting or migrating)")
        else:
            try:
                answer = await within(self.store.run(ping), STORE_TIMEOUT, self.clock)
                if answer != 1:
                    problems.append(f"store: unexpected answer {answer!r}")
            except Exception as e:
                problems.append(f"store: {_describe(e)}")
        problem = writable_problem(self.spool_path, self.config.limits.max_message_size)
        if problem:
            problems.append(f"spool: {problem}")
        if problems:
            log.warn("health check failed: {problems}", problems="; ".join(problems))
            return text_response(503, "".join(p + "\n" for p in problems))
        return text_response(200, "ok\n")


# ---------------------------------------------------------------------------
# Wiring


def make_resource(config, store, spool, clock, ready=None) -> Resource:
    """
    The resource tree: C{/unsubscribe/TOKEN}, C{/metrics}, C{/healthz}.
    C{spool} is the L{Spool} (or its path), C{clock} gives the time and
    the timeouts, C{ready()} fires once the store can be used.
    """
    tracker = TrackerSite(config, store, spool, clock, ready)
    root = RootResource(tracker)
    root.putChild(b"unsubscribe", UnsubscribeResource(tracker))
    root.putChild(b"metrics", MetricsResource(tracker))
    root.putChild(b"healthz", HealthResource(tracker))
    return root


def make_site(config, store, spool, reactor, ready=None) -> server.Site:
    site = server.Site(make_resource(config, store, spool, reactor, ready), reactor=reactor)
    site.displayTracebacks = False
    return site


def make_http_services(config, store, spool, reactor, ready=None) -> list[IService]:
    """
    One listening service per endpoint of C{[http] listen}, named
    C{http:ENDPOINT}, all serving the same site.
    """
    if not config.http.listen:
        return []
    site = make_site(config, store, spool, reactor, ready)
    services: list[IService] = []
    for description in config.http.listen:
        services.append(ListeningService("http", description, site, reactor))
    return services
