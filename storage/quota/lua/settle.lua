-- settle.lua: replace a request's reservation by what it actually used (a refund or a top-up),
-- once: a second settle of the same request id changes nothing.
--
-- Runs after quota_lib.lua (prepended by QuotaStore).
-- The name after each KEYS[i] and ARGV[i] is the one storage/quota/scripts.py declares
-- (SETTLE); tests/test_quota_scripts.py checks that the two lists agree.
-- KEYS[1] token_buckets   q1:{c}:tpm      hash        token sub-buckets of the minute window
-- KEYS[2] month_counters  q1:{c}:month    hash        calendar-month counters
-- KEYS[3] pending         q1:{c}:pending  sorted set  unsettled reservations by release deadline
-- KEYS[4] reservation     q1:{c}:r:<id>   hash        this request's reservation
-- ARGV[1] tokens        actual tokens (0 for an upstream error or a disconnect that used none)
-- ARGV[2] spend_micros  actual spend, in micro-dollars
-- Reply: {outcome (1 settled | 2 already settled, nothing changed | 0 no such reservation, e.g.
--         it expired 2 x ttl after admission: nothing changed), tokens_delta, spend_micros_delta
--         (what was added to the counters; negative is a refund), released (1: the ttl had
--         already given the reservation back, so the actual usage was added in full)}
--        and, when settled (outcome 1), four more: month ("YYYY-MM", the month the reservation
--         counted in), month_requests, month_tokens, month_spend_micros (that month's counters
--         after this settle, other requests' pending reservations included, as admit sees them)
-- Clock: Redis TIME, only to release other expired reservations of the customer on the way.
-- The request itself stays counted in the request windows whatever it used. The deltas go to
-- the sub-bucket and month the reservation counted in; a sub-bucket that has left the minute
-- window is not touched (its minute is over).

local tpm_key, month_key, pending_key, res_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local actual_tokens, actual_micros = tonumber(ARGV[1]), tonumber(ARGV[2])

release_expired(pending_key, tpm_key, month_key, now_ms())

local r = redis.call('HMGET', res_key, 'state', 'tokens', 'spend_micros', 'bucket', 'month', 'member')
if not r[1] then return {0, 0, 0, 0} end
if r[1] == 'settled' then return {2, 0, 0, 0} end

-- Still pending means still counted at its reserved amounts; gone means the ttl released it.
local live = redis.call('ZREM', pending_key, r[6])
local counted_tokens, counted_micros = 0, 0
if live == 1 then counted_tokens, counted_micros = tonumber(r[2]), tonumber(r[3]) end
local d_tokens = actual_tokens - counted_tokens
local d_micros = actual_micros - counted_micros
adjust(tpm_key, month_key, r[4], r[5], d_tokens, d_micros)
redis.call('HSET', res_key, 'state', 'settled', 'settled_tokens', int(actual_tokens),
  'settled_spend_micros', int(actual_micros))
local m = redis.call('HMGET', month_key, r[5] .. ':requests', r[5] .. ':tokens',
  r[5] .. ':spend_micros')
return {1, d_tokens, d_micros, 1 - live,
  r[5], tonumber(m[1]) or 0, tonumber(m[2]) or 0, tonumber(m[3]) or 0}
