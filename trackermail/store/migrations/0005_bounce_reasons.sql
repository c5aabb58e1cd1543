-- The bounce policy acts on reasons (see trackermail/bounces/policy.py).

-- Copies refused for reasons of ours (blocked, spam, reputation ...): they
-- neither count against the address nor as mail it was sent.
ALTER TABLE bounce_stats ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;

-- The copies that have bounced, by the identity their VERP address names:
-- a second bounce for one copy (a replay, or a DSN after the smarthost
-- refused it) is not counted again. Kept while such a bounce may come.
CREATE TABLE bounced_copies (
    copy TEXT PRIMARY KEY,
    day TEXT NOT NULL,
    seen DOUBLE PRECISION NOT NULL
);
CREATE INDEX bounced_copies_day ON bounced_copies (day);

-- What bounced per day, destination domain and reason: the operator's view
-- (trackermail bounces) and the "a domain refuses us" signal.
CREATE TABLE bounce_domains (
    day TEXT NOT NULL,
    domain TEXT NOT NULL,
    reason TEXT NOT NULL,
    grp TEXT NOT NULL,
    hard INTEGER NOT NULL DEFAULT 0,
    soft INTEGER NOT NULL DEFAULT 0,
    first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,
    diagnostic TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (day, domain, reason)
);
CREATE INDEX bounce_domains_domain ON bounce_domains (domain, day);
