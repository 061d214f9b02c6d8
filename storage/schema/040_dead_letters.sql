-- 040_dead_letters: usage events PostgreSQL refused for what they hold.
--
-- The usage writer (storage/usage/writer.py) bisects a batch PostgreSQL refuses for a data
-- reason (SQLSTATE class 22 or 23) until the refused rows are isolated, writes the rest, and
-- stores each refused row here instead of dropping it. `tollbooth usage replay-dead-letters`
-- (storage/usage/dead_letters.py) retries them: a row that is now accepted moves to usage_events
-- and is deleted from here in the same transaction; one still refused stays, attempts + 1.
--
--   event_id       the event's id (for a line too damaged to hold one: a UUIDv5 of its bytes)
--   event          the event as a JSON object, column -> value, as replay inserts it
--                  (jsonb_populate_record(NULL::usage_events, event)); NULL when PostgreSQL
--                  cannot hold the line as jsonb (e.g. a NUL character): an operator fixes
--                  it by writing a corrected event here, then replays
--   journal_line   the event exactly as it was journaled (one line of COPY text format)
--   error          PostgreSQL's error for the last attempt (SQLSTATE: message; detail)
--   first_failed_at, last_failed_at, attempts

CREATE TABLE usage_dead_letters (
    event_id        uuid PRIMARY KEY,
    event           jsonb,
    journal_line    bytea NOT NULL,
    error           text NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 1 CHECK (attempts >= 1)
);

CREATE INDEX usage_dead_letters_first_failed_idx ON usage_dead_letters (first_failed_at);
