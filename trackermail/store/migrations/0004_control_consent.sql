-- The control bot's consent rules (see trackermail/control/).

-- Replies of the control bot to one sender a day, by its budget key (the
-- address in lower case, with the +suffix of its local part removed): the
-- cap on backscatter to forged senders.
CREATE TABLE control_replies (
    address TEXT NOT NULL,
    day TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (address, day)
);

-- Random text drawn when a subscription starts (or starts again): part of
-- the signed input of its unsubscribe token, so that the token of an ended
-- subscription never works for a later one, even one that got the same row
-- id. NULL for rows made before this column existed (the empty text then).
ALTER TABLE subscriptions ADD COLUMN token_salt TEXT;
