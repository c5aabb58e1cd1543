-- A body is stored in chunks of at most 1 MiB, each cut after a line end
-- where it can be: the first in outbox_messages.body, further ones in
-- outbox_chunks, so that neither the writer nor the reader ever handles one
-- huge value. Most mail (a few KiB) is one chunk: one insert, as before.
-- size is the whole body's length, known before the body is read.
ALTER TABLE outbox_messages ADD COLUMN size BIGINT NOT NULL DEFAULT 0;
UPDATE outbox_messages SET size = LENGTH(body);
CREATE TABLE outbox_chunks (
    message_id BIGINT NOT NULL REFERENCES outbox_messages (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (message_id, seq)
);
