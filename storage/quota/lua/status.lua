-- status.lua: a customer's usage in every window, for /usage/limits and /usage/quota-status.
--
-- Runs after quota_lib.lua (prepended by QuotaStore).
-- The name after each KEYS[i] and ARGV[i] is the one storage/quota/scripts.py declares
-- (STATUS); tests/test_quota_scripts.py checks that the two lists agree.
-- KEYS[1] requests_log    q1:{c}:rpm      sorted set  sliding request log
-- KEYS[2] token_buckets   q1:{c}:tpm      hash        token sub-buckets of the minute window
-- KEYS[3] month_counters  q1:{c}:month    hash        calendar-month counters
-- KEYS[4] pending         q1:{c}:pending  sorted set  unsettled reservations by release deadline
-- ARGV[1] window_ms  window length (60000 in production)
-- Reply: the usage snapshot of quota_lib.lua.
-- Clock: Redis TIME. Reserves nothing; it only releases expired reservations and drops entries
-- that have left the window, as admit would, so what it reports is what admit would see.

local rpm_key, tpm_key, month_key, pending_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms()
release_expired(pending_key, tpm_key, month_key, now)
return usage_reply(read_usage(rpm_key, tpm_key, month_key, now, tonumber(ARGV[1])))
