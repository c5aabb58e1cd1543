-- Per-delivery header lines sent before the shared body: the body of a
-- fan-out is stored once, while direct and team copies (and, with one-click
-- unsubscribe, each recipient) get their own headers.
ALTER TABLE outbox_deliveries ADD COLUMN prefix {blob};
