-- A copy that was sent is forgotten at once (a delete is far cheaper than
-- an update of an indexed row, and leaves nothing to purge later); its
-- message keeps the count of copies sent and when the last one went.
ALTER TABLE outbox_messages ADD COLUMN sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox_messages ADD COLUMN last_sent DOUBLE PRECISION;
UPDATE outbox_messages SET
    sent = (SELECT COUNT(*) FROM outbox_deliveries d
            WHERE d.message_id = outbox_messages.id AND d.state = 'sent'),
    last_sent = (SELECT MAX(finished) FROM outbox_deliveries d
                 WHERE d.message_id = outbox_messages.id AND d.state = 'sent');
DELETE FROM outbox_deliveries WHERE state = 'sent';
-- Claims walk due deliveries in (next_attempt, id) order: with id in the
-- index, the order comes from the index instead of a sort of every
-- delivery due at the same moment (a fan-out's thousands).
CREATE INDEX outbox_deliveries_claim ON outbox_deliveries (state, next_attempt, id);
DROP INDEX outbox_deliveries_due;
