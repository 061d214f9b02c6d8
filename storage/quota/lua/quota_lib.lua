-- quota_lib.lua: the functions admit.lua, settle.lua and status.lua share.
--
-- Not a script on its own: QuotaStore prepends this file to each of those scripts before it
-- registers them, so there is one calendar, one sliding window and one release routine.
-- KEYS: none of its own; every function takes the key names it touches as arguments, and the
--       callers only ever pass keys they received in KEYS (all under one customer hash tag).
-- ARGV: none.
-- Clock: now_ms() is the Redis server's TIME in whole milliseconds. Nothing here reads the
--        gateway's clock.
-- Numbers: Lua numbers are doubles, exact for integers up to 2^53 (about 9e15), far above any
--          token count or micro-dollar sum one customer reaches in a month. Integers go back to
--          Redis through int(), never in exponent notation.
--
-- Usage snapshot: admit and status end their reply with these ten fields, in this order:
--   now_ms, month ("YYYY-MM"), next_month_ms, minute_requests, minute_requests_reset_ms,
--   minute_tokens, minute_tokens_reset_ms, month_requests, month_tokens, month_spend_micros
-- A *_reset_ms is how long until the oldest usage still in the minute window leaves it
-- (0 when the window is empty).

local SWEEP_MAX = 100            -- expired reservations released per call, at most
local SUB_BUCKETS = 60           -- token sub-buckets per window
local MONTH_RETENTION_MS = 31 * 86400000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(n)
  return string.format('%d', n)
end

-- Calendar (proleptic Gregorian, UTC), after Howard Hinnant's days_from_civil algorithms.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

-- The UTC calendar month holding instant ms: its id "YYYY-MM", its first and its next
-- month's first millisecond.
local function month_of(ms)
  local y, m = civil_from_days(math.floor(ms / 86400000))
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return string.format('%04d-%02d', y, m),
    days_from_civil(y, m, 1) * 86400000,
    days_from_civil(ny, nm, 1) * 86400000
end

local function bucket_ms(window_ms)
  return math.max(1, math.floor(window_ms / SUB_BUCKETS))
end

-- The token sub-buckets still in the minute window, oldest first, as {index, tokens, last_ms}.
-- A bucket leaves the window once its *last* admission is window_ms old, so a token is never
-- forgotten before a full window has passed since it was reserved (at most one sub-bucket,
-- window/60, later than an exact log would). Dead buckets are deleted on the way.
local function live_buckets(key, now, window_ms)
  local flat = redis.call('HGETALL', key)
  local tokens, last = {}, {}
  for i = 1, #flat, 2 do
    local idx, is_time = string.match(flat[i], '^(%-?%d+)(:?t?)$')
    if idx then
      if is_time == ':t' then last[idx] = tonumber(flat[i + 1])
      else tokens[idx] = tonumber(flat[i + 1]) end
    end
  end
  local live, dead = {}, {}
  for idx, amount in pairs(tokens) do
    local t = last[idx]
    if t == nil or now >= t + window_ms then
      dead[#dead + 1] = idx
      dead[#dead + 1] = idx .. ':t'
    else
      live[#live + 1] = {tonumber(idx), amount, t}
    end
  end
  if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  return live
end

local function sum_tokens(live)
  local used = 0
  for _, b in ipairs(live) do used = used + b[2] end
  return used
end

local function tokens_reset_ms(live, now, window_ms)
  for _, b in ipairs(live) do
    if b[2] > 0 then return b[3] + window_ms - now end
  end
  return 0
end

-- Apply a change of tokens and spend to the sub-bucket and the month a reservation counted in.
-- A bucket that has left the window is not recreated: its minute is over.
local function adjust(tpm_key, month_key, bucket, month, d_tokens, d_micros)
  if d_tokens ~= 0 and redis.call('HEXISTS', tpm_key, bucket) == 1 then
    redis.call('HINCRBY', tpm_key, bucket, int(d_tokens))
  end
  if redis.call('HEXISTS', month_key, month .. ':requests') == 1 then
    if d_tokens ~= 0 then redis.call('HINCRBY', month_key, month .. ':tokens', int(d_tokens)) end
    if d_micros ~= 0 then
      redis.call('HINCRBY', month_key, month .. ':spend_micros', int(d_micros))
    end
  end
end

-- A pending member: "<tokens>|<spend_micros>|<bucket>|<month>|<request id>".
local function parse_member(member)
  local tokens, micros, bucket, month = string.match(member, '^(%d+)|(%d+)|(%-?%d+)|([^|]+)|')
  return tonumber(tokens), tonumber(micros), bucket, month
end

-- Give back the tokens and spend of reservations whose deadline has passed (their request
-- died without settling). The request itself stays counted. Bounded per call; the rest wait
-- for the customer's next call, which only over-counts (refuses early), never under-counts.
local function release_expired(pending_key, tpm_key, month_key, now)
  local due = redis.call('ZRANGEBYSCORE', pending_key, '-inf', now, 'LIMIT', 0, SWEEP_MAX)
  for _, member in ipairs(due) do
    local tokens, micros, bucket, month = parse_member(member)
    if tokens then adjust(tpm_key, month_key, bucket, month, -tokens, -micros) end
    redis.call('ZREM', pending_key, member)
  end
end

-- Everything admit and status need to know about a customer's windows right now.
local function read_usage(rpm_key, tpm_key, month_key, now, window_ms)
  local u = {now = now, window_ms = window_ms}
  u.month, u.month_start, u.next_month = month_of(now)
  redis.call('ZREMRANGEBYSCORE', rpm_key, '-inf', now - window_ms)
  u.minute_requests = redis.call('ZCARD', rpm_key)
  u.requests_reset = 0
  if u.minute_requests > 0 then
    local oldest = redis.call('ZRANGE', rpm_key, 0, 0, 'WITHSCORES')
    u.requests_reset = tonumber(oldest[2]) + window_ms - now
  end
  u.buckets = live_buckets(tpm_key, now, window_ms)
  u.minute_tokens = sum_tokens(u.buckets)
  u.tokens_reset = tokens_reset_ms(u.buckets, now, window_ms)
  local m = redis.call('HMGET', month_key, u.month .. ':requests', u.month .. ':tokens',
    u.month .. ':spend_micros')
  u.month_requests = tonumber(m[1]) or 0
  u.month_tokens = tonumber(m[2]) or 0
  u.month_spend = tonumber(m[3]) or 0
  return u
end

local function usage_reply(u)
  -- Lua numbers become integer replies (exact: all are whole numbers below 2^53).
  return {u.now, u.month, u.next_month, u.minute_requests, u.requests_reset,
    u.minute_tokens, u.tokens_reset, u.month_requests, u.month_tokens, u.month_spend}
end
