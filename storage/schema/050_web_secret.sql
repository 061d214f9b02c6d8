-- 050_web_secret: the key that signs portal links and web session cookies.
--
-- Used only when TOLLBOOTH_PORTAL_SECRET is not set: the first process that needs a key
-- generates one and inserts it here (storage/web_secret.py); every other instance, and every
-- restart, reads the same row, so a link or a cookie signed by one instance is accepted by all.
-- Deleting the row (and restarting) invalidates every link and session issued so far.
--
--   name        what the secret signs ('web')
--   secret      32 random bytes
--   created_at  when it was generated

CREATE TABLE web_secrets (
    name       text PRIMARY KEY,
    secret     bytea NOT NULL CHECK (octet_length(secret) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
