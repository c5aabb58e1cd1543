# -*- test-case-name: tests.bounces.test_reasons -*-
"""
What each bounce reason sounds like: the phrases MTAs and mail providers
use when they refuse a recipient, a message or a client, one pattern per
reason (see L{trackermail.bounces.reasons}).

The patterns are matched against a normalised diagnostic: lower case, white
space collapsed to single spaces, addresses blanked out (an address says
who, not why: C{nospam@example.org} must not read as a spam verdict).
"""

from __future__ import annotations

import re


def words(*alternatives: str) -> re.Pattern:
    """
    One pattern matching any of C{alternatives} (regular expressions).
    """
    return re.compile("|".join("(?:%s)" % a for a in alternatives))


PHRASES = {
    "mailboxfull": words(
        r"mail ?box (?:is |was )?full", r"full mail ?box", r"mail ?folder is full",
        r"(?:mail ?box|account|user|recipient|maildir|mail|disk|disc|storage|"
        r"domaindisk|userdisk) (?:is |has )?(?:over|exceed(?:ed|s|ing)?) (?:the |its |their )?"
        r"(?:disk |storage |mailbox |allowed )?(?:quota|limit|size)",
        r"over (?:the allowed |disk |their |its )?quota", r"quota (?:exceeded|violation|full)",
        r"exceed(?:ed|s|ing) (?:its |their |the )?(?:mailbox |storage |disk )?quota",
        r"exceeded storage allocation", r"not enough storage space",
        r"exceed (?:the |its |their )?mailbox quota",
        r"inbox is out of storage space", r"email quota exceeded",
        r"quota exceed", r"disk quota exceeded",
        r"does not have enough space", r"space has been used up",
        r"mailbox (?:has )?exceeded (?:the|its) (?:local|disk space) limit",
        r"(?:number|size) of messages in recipient's mailbox exceeded",
        r"too many messages (?:on the server|in (?:the|this) mailbox)", r"too much mail data",
        r"mailbox would exceed", r"boite du destinataire pleine", r"their mailbox is full",
        r"mail file size exceeds the maximum size", r"exceeding receiving limits",
        r"reached (?:its |their )?disk quota",
    ),
    "mesgtoobig": words(
        r"message (?:file |size )?(?:is )?too (?:big|large) for (?:this|the)",
        r"message (?:file )?too big", r"max(?:imum)? message size exceeded",
        r"message size exceeds", r"exceeded maximum inbound message size",
        r"message length exceeds administrative limit", r"size limit",
        r"message (?:is )?larger than", r"recipsizelimit", r"exceeded the maximum (?:incoming )?message size",
    ),
    "exceedlimit": words(r"message too large"),
    "suspend": words(
        r"(?:is|mailbox|account|user) (?:currently |has been |was )?suspended",
        r"account (?:has been )?(?:disabled|discontinued|deactivated|locked|frozen)",
        r"mailbox (?:is )?(?:disabled|frozen|inactive|deactivated)",
        r"account that you tried to reach is (?:disabled|inactive)",
        r"is a deactivated mailbox", r"temporar(?:y|ily) (?:locked|inactive)",
        r"invalid/inactive user", r"recipient suspend", r"boite du destinataire archivee",
        r"mailbox unavailable or access denied", r"account is locked", r"administrative?le?y disabled", r"is no longer valid\.",
    ),
    "hasmoved": words(r"address .+ has been replaced by", r"no longer on (?:this )?server",
                       r"mailbox has moved", r"has moved, no forwarding"),
    "norelaying": words(
        r"relay(?:ing)? (?:access )?(?:denied|not permitted|prohibited|not allowed)",
        r"not configured to relay",
        r"mail relay denied", r"invalid credentials for relay",
        r"not authorized to send email directly to our servers",
        r"not (?:allowed|permitted) to relay", r"unable to relay", r"insecure mail relay",
        r"we do not relay", r"not in my list of allowed rcpthosts",
        r"requires authentication when attempting to send to a non-local",
    ),
    "authfailure": words(
        r"dmarc (?:policy|reject|fail)", r"\bspf\b (?:check|validation|fail|record (?:check )?fail)",
        r"sender policy framework", r"spf \(sender policy framework\)",
        r"bad spf records", r"inspect your spf settings", r"is not allowed to send (?:mail )?from .+ spf",
        r"\bdkim\b (?:signature |check |validation )?(?:fail|invalid|required|missing)",
        r"unauthenticated email from",
        r"the spf record of the sending domain", r"senders to authenticate (?:their email )?with",
        r"fails to pass (?:spf|authentication) checks", r"spf record with a hard fail",
        r"aligned with either the authenticated spf or dkim",
        r"does not pass dmarc verification", r"must pass either spf or dkim", r"spf\.pobox\.com",
    ),
    "userunknown": words(
        r"user ?unknown", r"unknown (?:user|recipient|mailbox|local ?part|e-?mail address|address)",
        r"no such (?:user|mailbox|recipient|address|person|local user|account)",
        r"(?:user|recipient|mailbox|address|account|addressee|e-?mail address) "
        r"(?:does not|doesn't|did not|not) (?:exist|found)",
        r"(?:user|recipient|mailbox|address|account|addressee|e-?mail address|destination) "
        r"(?:was |is |could )?(?:not|n't) (?:be )?(?:found|known|exist|present|listed|recognized)",
        r"(?:is|was) not (?:a )?(?:valid|known|local) (?:user|recipient|mailbox|address)",
        r"invalid (?:recipient|mailbox|address|user)", r"(?:recipient|address|user) invalid",
        r"mailbox (?:is )?(?:unavailable|unavaiable|invalid|not available|inactive)",
        r"no mailbox (?:here|by that name|found|available)", r"no account by that name",
        r"not (?:listed|found) in (?:the )?(?:domino )?directory", r"not in (?:the )?name directory",
        r"(?:recipient|user|address|mailbox) name is not recognized",
        r"address(?:ee)? unknown", r"email address (?:is )?(?:wrong|not valid|invalid)",
        r"wasn.t found at the destination domain", r"(?:bad|invalid) destination mailbox",
        r"unknown or illegal (?:user|alias)", r"illegal (?:user|alias)",
        r"badrcptto", r"not in my validrcptto", r"this address no longer accepts mail",
        r"there is no one at this address", r"recipient (?:address )?rejected: (?:invalid|unknown)",
        r"recipient (?:is )?not (?:ok|local|accepted)", r"recipient not exist",
        r"recipient refuses to accept your mail", r"destination (?:addresses|server) (?:were|rejected) "
        r"(?:unknown|recipients)", r"unknown recipient", r"not a valid (?:user|mailbox|recipient)",
        r"user (?:is )?not active", r"user missing home directory",
        r"no valid recipients",
        r"recipient address rejected(?:\.|$| \(in reply)",
        r"did not exactly match", r"resolver\.adr\.recipient ?notfound", r"5\.1\.0 address rejected",
        r"recipient address rejected: access denied",
        r"utilisateur inconnu", r"no existe (?:dicha persona|ese usuario)",
        r"nessun utente", r"empfaenger unbekannt", r"unbekannte? (?:empf|user|benutzer)",
        r"can't accept user", r"account unavailable", r"this spectator does not exist",
        r"not (?:an )?active address", r"the following recipients was undeliverable",
        r"invalid final delivery userid", r"dd this user doesn't have a",
        r"no mailbox here by that name",
    ),
    "filtered": words(
        r"only accepting mail from specific", r"refused due to recipient preferences",
        r"restricted sms e-?mail", r"not accepting any mail", r"resolver\.rst\.notauthorized",
        r"this account is protected by", r"user reject", r"refuse to receive mail",
        r"you have been blocked by the recipient", r"due to extended inactivity",
        r"bounced address", r"doesn.t have a .+ account",
    ),
    "requireptr": words(
        r"\bptr\b (?:record|resource)", r"reverse dns", r"rdns", r"cannot find your hostname",
        r"cannot resolve your address", r"ip name lookup failed", r"mismatches client ip",
        r"dns lookup failure: .+ try again later", r"unresolvable relay host name",
        r"generic dns ptr", r"unverifiable sending ip", r"unverifyable sending ip",
        r"does not have a ptr", r"forward dns entry does not point to the sending ip",
        r"no reverse dns", r"fix reverse dns",
        r"ptr records? and authentication", r"have a ptr record",
        r"does not match the ip address of the hostname",
    ),
    "notcompliantrfc": words(
        r"missing a valid (?:address in the from: header|message-id)",
        r"unicode character in a disallowed header", r"encoded-word syntax is not permitted",
        r"mail message is malformed", r"not a valid rfc ?5321 address",
        r"headers are not rfc compliant",
        r"not rfc ?5322 compliant", r"rfcmessagenoncompliant", r"multiple .*addresses in from",
        r"duplicate header", r"multiple .+ headers?",
    ),
    "badreputation": words(
        r"poor (?:email )?reputation", r"low reputation", r"reputation (?:problem|score)",
        r"\[tss04\]", r"unexpected volume or user complaints",
        r"rate limited due to ip reputation", r"ip reputation",
    ),
    "rejected": words(
        r"sender (?:address |email address |domain )?(?:is )?(?:rejected|invalid|not pre-approved)",
        r"sender verify failed", r"sender is spammer", r"domain of sender address",
        r"invalid sender", r"bogus mail from", r"mail from not owned by user",
        r"(?:empty|null) (?:envelope )?senders? (?:are |is )?not allowed",
        r"no third-party dsns", r"unroutable sender address", r"sender domain is empty",
        r"administrative prohibition", r"address rejected", r"batv",
        r"returned mail not accepted here", r"unsigned dsn", r"envelope blocked",
        r"fully qualified email address required", r"emetteur invalide",
        r"delivery not authorized, message refused", r"mx records for .+ violate",
        r"rule imposed mailbox access", r"access denied \(in reply to mail from",
        r"recursive cname records", r"email address is not verified",
        r"sent to/from an address that has been blacklisted",
        r"from: domain is invalid", r"is not a registered gateway user",
        r"connections not accepted from servers without a valid sender domain",
        r"backscatter protection", r"all recipient addresses rejected", r"send mail as",
        r"does not exist e2110",
        r"mail sending denied", r"unauthenticated email is not accepted",
        r"unresolvable rfc\.?5321 (?:from )?domain", r"will be permanently deferred",
    ),
    "hostunknown": words(
        r"host (?:or domain name )?(?:not found|unknown)", r"unknown host",
        r"no such domain", r"domain (?:does not|doesn't|must) exist", r"domain is not reachable",
        r"host unreachable", r"name or service not known", r"unrouteable address",
        r"unknown domain", r"domain (?:not found|unknown)", r"account or domain may not exist",
        r"mail domain mentioned in email address is unknown", r"couldn't find any host named",
        r"all relevant mx records point to non-existent hosts", r"host \S+ not found",
        r"no (?:valid )?(?:mx|host) (?:record )?(?:found|for)",
        r"all host address lookups failed permanently",
    ),
    "spamdetected": words(
        r"\bspam", r"\bu?bulk (?:e-?mail|mail)", r"unsolicited", r"\bube\b",
        r"content (?:filter|rejected|denied)", r"message content rejected",
        r"rejecting (?:banned|mail) content", r"unacceptable content",
        r"blacklisted (?:url|link)", r"uribl", r"message filtered", r"mail content denied",
        r"our system has detected that this message is", r"recurrent pattern detection",
        r"rejected for policy reasons", r"blocked by spamassassin", r"probable spam",
        r"may consider spam", r"classified as (?:spam|bulk)", r"spam-like",
        r"listed in work\.drbl", r"sender domain listed at",
        r"temporarily blocked by our filter", r"the content of this message looked like",
        r"nature of the content or the links within",
        r"mail rejete\. mail rejected\. ofr_?506",
    ),
    "virusdetected": words(
        r"\bvirus", r"malware", r"malicious", r"trojan", r"infected",
        r"potentially executable attachment", r"executable (?:file|attachment|content)",
        r"used by recent viruses",
    ),
    "policyviolation": words(
        r"local policy violation", r"violat\w* (?:our |local |the )?(?:\w+ )?polic",
        r"denied by policy", r"not accepted for policy reasons", r"(?:rejected|blocked) (?:due to|by) "
        r"(?:local |security |organization(?:al)? )?(?:polic|settings)",
        r"email rejected due to security policies", r"illegal attachment",
        r"content presents a potential", r"message bounced due to organizational",
        r"members-only list", r"closed mailing list", r"not subscribed to this group",
        r"header (?:error|are not accepted)", r"mass mailer", r"message given low priority",
        r"not accepting mail with (?:attachments|embedded images)", r"we do not accept messages containing",
        r"without solving a captcha", r"protocol violation", r"host network not allowed",
        r"has a policy that prohibited the mail", r"messages with the same message-id",
    ),
    "speeding": words(
        r"try again slower", r"receiving mail at a rate", r"receiving mail too quickly",
        r"sent to too many recipients", r"sending (?:too fast|rate exceeded)",
        r"has been rate limited", r"smtp relay (?:sending )?limit exceeded",
        r"daily (?:user )?sending (?:quota|limit) exceeded",
    ),
    "toomanyconn": words(
        r"too many (?:connections|concurrent|smtp sessions|errors from your ip|recipients)",
        r"connection (?:rate )?limit exceeded", r"maximum connection limit",
        r"per-domain connection limit", r"max emails per hour", r"throttling failure",
        r"trop de connexions", r"numerous attempts to deliver", r"frequency limited", r"max message per connection reached",
    ),
    # The client (our IP, our host) is refused: checked before any verdict
    # on the content.
    "client": words(
        r"unusual rate of (?:unsolicited )?mail", r"ip not in whitelist",
        r"helo/ehlo argument is invalid", r"empty helo/ehlo argument",
        r"try again later, closing connection",
        r"access denied, (?:banned sending ip|bad helo|rejected by recipient|banned sender)",
        r"using customer block list", r"part of their network is on our block list",
        r"blocked using", r"\brbl\b", r"dnsbl", r"spamcop", r"spamhaus",
        r"client host (?:\[[^\]]*\] )?(?:rejected|blocked)", r"access from ip address",
        r"not currently accepting mail from your ip", r"(?:your|the|client|source) (?:ip|host|server|"
        r"network)(?: address)? (?:is |has been |was )?(?:temporarily |permanently )?(?:blocked|"
        r"blacklisted|banned|listed|not allowed)", r"mail server at .+ is blocked",
        r"ip source bloquee",
    ),
    "blocked": words(
        r"blocked using", r"(?:black|block|deny|denied) ?list", r"\brbl\b", r"dnsbl", r"spamcop",
        r"spamhaus", r"client host (?:\[[^\]]*\] )?(?:rejected|blocked)", r"access from ip address",
        r"connection (?:dropped|refused by|reset by peer|was dropped by remote)",
        r"not currently accepting mail from your ip", r"(?:your|the) (?:ip|host|server|network) "
        r"(?:address )?(?:is |has been |was )?(?:temporarily |permanently )?(?:blocked|blacklisted|banned|"
        r"listed|not allowed)", r"mail server at .+ is blocked", r"please use the smtp server of your isp",
        r"dynamic ip", r"rejecting open proxy", r"looks suspiciously like spammer",
        r"is not allowed to send mail from", r"confirm this mail server", r"go away",
        r"ip/domain reputation problems", r"no access from mail server", r"spf record",
        r"server requires confirmation", r"blocked for abuse", r"due to user complaints",
        r"domain does not exist:", r"too many unwanted messages",
        r"messages from \S+ weren't sent",
    ),
    "securityerror": words(
        r"authentication (?:required|failure|failed|credentials invalid|turned on)",
        r"unauthenticated senders not allowed", r"not authorized to send mail",
        r"tls required", r"verification failure", r"account not subscribed to ses",
        r"not authorized to perform ses", r"is a dead domain", r"authentification requise",
        r"you don't authenticate",
        r"tls required for rcpt domain", r"senders to use tls",
        r"must issue a starttls command first", r"recipient address rejected: access denied",
    ),
    "systemerror": words(
        r"local (?:configuration )?error", r"configuration error", r"config error",
        r"would create a mail loop",
        r"delivery to (?:file|pipe) forbidden", r"local delivery failed", r"lmtp error after",
        r"bad interpreter", r"automatic homedir creator crashed", r"ldap (?:server|attribute|lookup)",
        r"internal (?:server )?error", r"system error", r"interrupted system call",
        r"queue file write error", r"temporary local problem", r"loops back to myself",
        r"loop was found", r"forwarding loop broken", r"timeout waiting for input",
        r"service (?:currently |temporarily )?unavailable", r"remote server is misconfigured",
        r"can't create user output file", r"error while being processed",
        r"could not load drd", r"no mdb", r"transaction failed",
        r"unable to contact ldap", r"directory server",
        r"temporary system problem", r"server busy",
        r"multiple destination domains per transaction",
        r"mail server (?:has )?temporarily rejected (?:this )?message",
    ),
    "networkerror": words(
        r"no route to host", r"host is unreachable", r"network (?:is )?unreachable",
        r"network error", r"name server reply", r"(?:too many|maximum) hops", r"hop count exceeded",
        r"routing loop", r"message looping", r"unable to resolve route", r"unrouteable mail domain",
        r"mail forwarding loop", r"forwarding loop count exceeded", r"host not found, try again",
        r"dns records for the destination computer could not be found",
        r"could not connect and send the mail", r"dns error", r"lookup of \S+ (?:responded|had no)",
        r"message exceeded \d+ hops",
        r"name server: \S+ host name lookup failure", r"(?:unable|wasn't able|was not able) to establish an smtp connection",
    ),
    "expired": words(
        r"connection timed out", r"timed? out (?:while|during|after)", r"connection expired",
        r"timeout - closing connection", r"message (?:timed out|expired)",
        r"delivery time expired", r"giving up on", r"gave up", r"(?:has been|too long) in the queue",
        r"in the queue too long", r"could not find a gateway", r"server did not respond",
        r"not been collected after", r"expired after sitting in queue",
        r"not delivered within \d+ (?:days|hours)", r"(?:remote )?(?:host|server) is not responding",
        r"retry time not reached", r"not reachable within the allowed queue period",
        r"delivery failed \d+ attempts", r"unable to deliver in \d+ minutes",
        r"retry timeout exceeded", r"delivery (?:attempts|has) (?:will )?"
        r"(?:continue|been delayed)", r"will be retried", r"giving up", r"could not deliver for the last",
        r"have been failing for a long time", r"did not accept our requests to connect",
        r"after multiple retries",
        r"has been frozen", r"was frozen on arrival",
    ),
    "contenterror": words(
        r"8-bit data in message header", r"header size exceeds", r"mime (?:complexity|headers?)",
        r"improperly-formatted binary content", r"unnecessary base64 encoding",
        r"too many received: headers", r"too many \"?received\"? headers", r"recipient list, exceeds policy limit",
    ),
    "systemfull": words(r"mail system full", r"exceeded storage allocation\b.*system",
                         r"(?:disk|spool|queue|file ?system) (?:is )?full",
                         r"(?:insufficient|not enough|no) (?:free )?disk space",
                         r"insufficient system storage"),
    "notaccept": words(
        r"(?:host|domain|host/domain|system) does not accept mail", r"does not accept (?:e-?)?mail",
        r"no mx record found", r"null mx", r"indicated no smtp service",
        r"smtp protocol returned a permanent error", r"name server: \.: host not found",
        r"not accepting (?:network )?messages", r"couldn't find a mail exchanger",
        r"no host found for existing smtp connection",
    ),
    "mailererror": words(
        r"procmail:", r"bin/(?:procmail|maildrop)", r"command (?:failed|died with status|output)",
        r"exit \d+", r"mailer error", r"pipe to \|", r"x-unix; \d+",
    ),
    "syntaxerror": words(r"malformed address", r"syntax error", r"syntactically invalid",
                         r"smtp protocol violation", r"unrecognized command",
                         r"unimplemented command", r"starttls may not be repeated",
                         r"angle-brackets nested too deep", r"expected word or \"<\"",
                         r"domain missing in source-routed address",
                          r"command (?:not recognized|unrecognized)", r"bad sequence of commands",
                          r"improper sequence"),
}
