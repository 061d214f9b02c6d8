-- admit.lua: reserve one request, its estimated tokens and its estimated spend in every window
-- of one customer, atomically; or, when any window would go over its limit, reserve nothing and
-- say which limit refused and how long until this request could fit.
--
-- Runs after quota_lib.lua (prepended by QuotaStore).
-- The name after each KEYS[i] and ARGV[i] is the one storage/quota/scripts.py declares (ADMIT);
-- tests/test_quota_scripts.py checks that the two lists agree.
-- KEYS[1] requests_log    q1:{c}:rpm      sorted set  sliding request log (member id, score ms)
-- KEYS[2] token_buckets   q1:{c}:tpm      hash        token sub-buckets of the minute window
-- KEYS[3] month_counters  q1:{c}:month    hash        calendar-month counters
-- KEYS[4] pending         q1:{c}:pending  sorted set  unsettled reservations by release deadline
-- KEYS[5] reservation     q1:{c}:r:<id>   hash        this request's reservation
-- ARGV[1]  request_id              the request's id
-- ARGV[2]  requests_per_minute     limit; -1 = unlimited (likewise ARGV[3] to ARGV[6])
-- ARGV[3]  tokens_per_minute       limit
-- ARGV[4]  requests_per_month      limit
-- ARGV[5]  tokens_per_month        limit
-- ARGV[6]  spend_per_month_micros  limit, in micro-dollars
-- ARGV[7]  tokens                  tokens to reserve (the request's worst case)
-- ARGV[8]  spend_micros            spend to reserve, in micro-dollars (its worst-case price)
-- ARGV[9]  reservation_ttl_ms      unsettled for this long, its tokens and spend are given back
-- ARGV[10] window_ms               window length (60000 in production; tests pass short ones)
-- ARGV[11] shadow                  "1" computes the decision, then reserves whatever it says
-- Reply: {admitted (0|1), limit ("" or the refusing limit's name, e.g. "requests_per_minute"),
--         retry_after_ms (-1: no wait can make this request fit), duplicate (1: this request id
--         already holds a reservation; nothing was reserved again), then the usage snapshot of
--         quota_lib.lua, counting this reservation when one was made}.
--         In shadow mode a refusal comes back as admitted = 1 with the limit that would refuse.
-- Clock: Redis TIME; months are UTC calendar months of that clock.
-- Which refusal: a monthly limit wins over a per-minute one (no wait within the minute helps);
-- between the two per-minute limits, the one with the longer wait (both must clear).

local rpm_key, tpm_key, month_key, pending_key, res_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local request_id = ARGV[1]
local rpm_limit, tpm_limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local rmo_limit, tmo_limit, spend_limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local tokens, micros = tonumber(ARGV[7]), tonumber(ARGV[8])
local ttl_ms, window_ms = tonumber(ARGV[9]), tonumber(ARGV[10])
local shadow = ARGV[11] == '1'

local now = now_ms()
release_expired(pending_key, tpm_key, month_key, now)
local u = read_usage(rpm_key, tpm_key, month_key, now, window_ms)

if redis.call('EXISTS', res_key) == 1 then
  return {1, '', 0, 1, unpack(usage_reply(u))}
end

local refused, retry = '', 0

local function check_month(name, limit, used, need)
  if refused == '' and limit >= 0 and used + need > limit then
    refused, retry = name, u.next_month - now
  end
end
check_month('requests_per_month', rmo_limit, u.month_requests, 1)
check_month('tokens_per_month', tmo_limit, u.month_tokens, tokens)
check_month('spend_per_month', spend_limit, u.month_spend, micros)

if refused == '' then
  if rpm_limit >= 0 and u.minute_requests + 1 > rpm_limit then
    -- The request at rank (count - limit) is the one whose leaving makes room.
    local wait = -1
    if rpm_limit > 0 then
      local rank = u.minute_requests - rpm_limit
      local entry = redis.call('ZRANGE', rpm_key, rank, rank, 'WITHSCORES')
      wait = tonumber(entry[2]) + window_ms - now
    end
    refused, retry = 'requests_per_minute', wait
  end
  if tpm_limit >= 0 and u.minute_tokens + tokens > tpm_limit then
    -- Walk the sub-buckets oldest first until enough tokens have left the window.
    local wait = -1
    if tokens <= tpm_limit then
      local freed = 0
      for _, b in ipairs(u.buckets) do
        freed = freed + b[2]
        if u.minute_tokens - freed + tokens <= tpm_limit then
          wait = b[3] + window_ms - now
          break
        end
      end
    end
    if refused == '' or wait == -1 or (retry ~= -1 and wait > retry) then
      refused, retry = 'tokens_per_minute', wait
    end
  end
end

if refused ~= '' and not shadow then
  return {0, refused, retry, 0, unpack(usage_reply(u))}
end

local month = u.month
local bucket = int(math.floor(now / bucket_ms(window_ms)))
local keep_until = u.next_month + MONTH_RETENTION_MS
local deadline = now + ttl_ms

redis.call('ZADD', rpm_key, int(now), request_id)
redis.call('PEXPIRE', rpm_key, int(window_ms))

redis.call('HINCRBY', tpm_key, bucket, int(tokens))
redis.call('HSET', tpm_key, bucket .. ':t', int(now))
redis.call('PEXPIRE', tpm_key, int(window_ms))

redis.call('HINCRBY', month_key, month .. ':requests', 1)
redis.call('HINCRBY', month_key, month .. ':tokens', int(tokens))
redis.call('HINCRBY', month_key, month .. ':spend_micros', int(micros))
redis.call('PEXPIREAT', month_key, int(keep_until))
if redis.call('HLEN', month_key) > 6 then
  -- Keep this month and the previous one (a late settle may still adjust it); drop the rest.
  local previous = month_of(u.month_start - 1)
  for _, field in ipairs(redis.call('HKEYS', month_key)) do
    local of = string.match(field, '^([^:]+):')
    if of ~= month and of ~= previous then redis.call('HDEL', month_key, field) end
  end
end

local member = table.concat({int(tokens), int(micros), bucket, month, request_id}, '|')
redis.call('ZADD', pending_key, int(deadline), member)
redis.call('PEXPIREAT', pending_key, int(math.max(keep_until, deadline)))

redis.call('HSET', res_key, 'state', 'reserved', 'tokens', int(tokens), 'spend_micros', int(micros),
  'bucket', bucket, 'month', month, 'deadline_ms', int(deadline), 'member', member)
redis.call('PEXPIRE', res_key, int(2 * ttl_ms))

u.minute_requests = u.minute_requests + 1
if u.requests_reset == 0 then u.requests_reset = window_ms end
u.minute_tokens = u.minute_tokens + tokens
if u.tokens_reset == 0 and tokens > 0 then u.tokens_reset = window_ms end
u.month_requests = u.month_requests + 1
u.month_tokens = u.month_tokens + tokens
u.month_spend = u.month_spend + micros
return {1, refused, retry, 0, unpack(usage_reply(u))}
