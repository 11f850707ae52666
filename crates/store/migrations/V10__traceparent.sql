-- Tracing across the queue (README, "Logs and traces"): the W3C trace
-- context of the request that created a row, so that whoever publishes it
-- (the API at once, or a relay later) carries it in the AMQP headers, and
-- the worker's spans join the request's trace. NULL for rows created
-- before this column existed.
ALTER TABLE messages ADD COLUMN traceparent text;
ALTER TABLE status_updates ADD COLUMN traceparent text;
