"""The quota counters in Redis: keys, Lua scripts, batching, and the client for each topology."""
