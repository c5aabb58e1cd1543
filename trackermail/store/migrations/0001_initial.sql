-- trackermail schema, version 1.
-- {serial} and {blob} are replaced per backend (see trackermail/store/schema.py).
-- Times are seconds since the epoch (DOUBLE PRECISION); days are 'YYYY-MM-DD'.

CREATE TABLE packages (
    id {serial},
    name TEXT NOT NULL UNIQUE,
    -- source: a source package; pseudo: a pseudo package; other: only known
    -- as a name (e.g. subscribed to before it existed).
    kind TEXT NOT NULL DEFAULT 'source'
);

CREATE TABLE binary_packages (
    name TEXT NOT NULL,
    source_id BIGINT NOT NULL REFERENCES packages (id) ON DELETE CASCADE,
    PRIMARY KEY (name, source_id)
);
CREATE INDEX binary_packages_source ON binary_packages (source_id);

CREATE TABLE keywords (
    id {serial},
    name TEXT NOT NULL UNIQUE,
    is_default BOOLEAN NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);

CREATE TABLE emails (
    id {serial},
    email TEXT NOT NULL,
    email_lower TEXT NOT NULL UNIQUE,
    -- FALSE: the user's default keyword set is the keywords marked default.
    own_default_keywords BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE email_default_keywords (
    email_id BIGINT NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    keyword_id BIGINT NOT NULL REFERENCES keywords (id) ON DELETE CASCADE,
    PRIMARY KEY (email_id, keyword_id)
);

CREATE TABLE subscriptions (
    id {serial},
    email_id BIGINT NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    package_id BIGINT NOT NULL REFERENCES packages (id) ON DELETE CASCADE,
    active BOOLEAN NOT NULL DEFAULT TRUE,
    -- FALSE: the subscription uses the user's default keyword set.
    own_keywords BOOLEAN NOT NULL DEFAULT FALSE,
    created DOUBLE PRECISION NOT NULL DEFAULT 0,
    UNIQUE (email_id, package_id)
);
CREATE INDEX subscriptions_package ON subscriptions (package_id);

CREATE TABLE subscription_keywords (
    subscription_id BIGINT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    keyword_id BIGINT NOT NULL REFERENCES keywords (id) ON DELETE CASCADE,
    PRIMARY KEY (subscription_id, keyword_id)
);

CREATE TABLE teams (
    id {serial},
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    public BOOLEAN NOT NULL DEFAULT TRUE,
    owner_id BIGINT REFERENCES emails (id) ON DELETE SET NULL
);

CREATE TABLE team_packages (
    team_id BIGINT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    package_id BIGINT NOT NULL REFERENCES packages (id) ON DELETE CASCADE,
    PRIMARY KEY (team_id, package_id)
);
CREATE INDEX team_packages_package ON team_packages (package_id);

CREATE TABLE memberships (
    id {serial},
    team_id BIGINT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    email_id BIGINT NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    muted BOOLEAN NOT NULL DEFAULT FALSE,
    -- FALSE: the membership uses the user's default keyword set.
    own_keywords BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (team_id, email_id)
);

CREATE TABLE membership_keywords (
    membership_id BIGINT NOT NULL REFERENCES memberships (id) ON DELETE CASCADE,
    keyword_id BIGINT NOT NULL REFERENCES keywords (id) ON DELETE CASCADE,
    PRIMARY KEY (membership_id, keyword_id)
);

-- Per-package settings of a membership: mute, and an own keyword set.
CREATE TABLE membership_packages (
    membership_id BIGINT NOT NULL REFERENCES memberships (id) ON DELETE CASCADE,
    package_id BIGINT NOT NULL REFERENCES packages (id) ON DELETE CASCADE,
    muted BOOLEAN NOT NULL DEFAULT FALSE,
    own_keywords BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (membership_id, package_id)
);

CREATE TABLE membership_package_keywords (
    membership_id BIGINT NOT NULL,
    package_id BIGINT NOT NULL,
    keyword_id BIGINT NOT NULL REFERENCES keywords (id) ON DELETE CASCADE,
    PRIMARY KEY (membership_id, package_id, keyword_id),
    FOREIGN KEY (membership_id, package_id)
        REFERENCES membership_packages (membership_id, package_id) ON DELETE CASCADE
);

CREATE TABLE confirmations (
    id {serial},
    confirm_key TEXT NOT NULL UNIQUE,
    email_lower TEXT NOT NULL,
    -- JSON list of the commands to run once confirmed.
    commands TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    used DOUBLE PRECISION
);
CREATE INDEX confirmations_email ON confirmations (email_lower);

-- How many confirmation mails went to an address on a day (abuse limit).
CREATE TABLE confirmation_sends (
    email_lower TEXT NOT NULL,
    day TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (email_lower, day)
);

CREATE TABLE bounce_stats (
    email_id BIGINT NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    day TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    bounced INTEGER NOT NULL DEFAULT 0,
    soft INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (email_id, day)
);

CREATE TABLE news (
    id {serial},
    package_id BIGINT NOT NULL REFERENCES packages (id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    content {blob} NOT NULL,
    content_type TEXT NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    created DOUBLE PRECISION NOT NULL
);
CREATE INDEX news_package ON news (package_id, created);

-- One row per outgoing message body: a fan-out stores its body once.
CREATE TABLE outbox_messages (
    id {serial},
    body {blob} NOT NULL,
    created DOUBLE PRECISION NOT NULL
);

CREATE TABLE outbox_deliveries (
    id {serial},
    message_id BIGINT NOT NULL REFERENCES outbox_messages (id) ON DELETE CASCADE,
    recipient TEXT NOT NULL,
    sender TEXT NOT NULL,
    -- queued -> sending -> sent | failed (and back to queued for a retry)
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt DOUBLE PRECISION NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    claimed_by TEXT,
    claimed_until DOUBLE PRECISION,
    finished DOUBLE PRECISION,
    last_code INTEGER,
    last_error TEXT
);
CREATE INDEX outbox_deliveries_due ON outbox_deliveries (state, next_attempt);
CREATE INDEX outbox_deliveries_message ON outbox_deliveries (message_id);

CREATE TABLE processed_messages (
    digest TEXT PRIMARY KEY,
    processed DOUBLE PRECISION NOT NULL,
    service TEXT NOT NULL DEFAULT ''
);

INSERT INTO keywords (name, is_default, description) VALUES
    ('default', TRUE, 'Anything else that cannot be better classified'),
    ('bts', TRUE, 'All bug reports and associated discussions'),
    ('bts-control', TRUE, 'Status changes of bug reports'),
    ('summary', TRUE, 'News about the status of the package'),
    ('upload-source', TRUE, 'Notifications of sourceful uploads'),
    ('archive', TRUE, 'Other notifications sent by the archive management tool'),
    ('contact', TRUE, 'Mails sent to the maintainer through the .debian.org email alias'),
    ('build', TRUE, 'Build failures notifications sent by the build daemons'),
    ('vcs', FALSE, 'Commit notices of the VCS repository associated to the package'),
    ('translation', FALSE, 'Translation related notifications'),
    ('upload-binary', FALSE, 'Notifications of binary-only uploads (made by build daemons)'),
    ('derivatives', FALSE, 'Changes made to this package by derivatives'),
    ('derivatives-bugs', FALSE, 'Bug traffic about this package in derivative distributions');
