-- The queue id of the received message an outbox message was made for
-- (a forwarded copy, a control reply, a bounce notice), so that one id
-- names a message in the log lines from its reception to its last copy.
-- NULL for mail made before this column existed, or by no message.
ALTER TABLE outbox_messages ADD COLUMN origin TEXT;
