"""gateway.traffic: per-minute requests and 429s by tier, in a ring of minutes."""

from __future__ import annotations

from gateway.traffic import MinuteTraffic


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counts_land_in_their_minute_and_old_minutes_roll_off() -> None:
    clock = _Clock(600.0)  # minute 10
    traffic = MinuteTraffic(minutes=3, clock=clock)
    traffic.count("free", refused=False)
    traffic.count("free", refused=True)
    traffic.count("pro", refused=False)
    clock.now = 665.0  # minute 11
    traffic.count("free", refused=True)
    series = traffic.series()
    assert [m.minute for m in series] == [9, 10, 11]
    assert series[0].requests == {} and series[0].refused == {}
    assert series[1].requests == {"free": 2, "pro": 1} and series[1].refused == {"free": 1}
    assert series[2].requests == {"free": 1} and series[2].refused == {"free": 1}
    assert traffic.tiers() == ["free", "pro"]
    clock.now = 60.0 * 14  # minutes 10 and 11 have left a 3-minute ring
    traffic.count("pro", refused=False)
    assert [m.minute for m in traffic.series()] == [12, 13, 14]
    assert sum(sum(m.requests.values()) for m in traffic.series()) == 1
