"""What every signed-in dashboard page's layout needs: the nav, the CSRF value, the period."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from gateway.web.dashboard_auth import BASE
from gateway.web.periods import PERIOD_LABELS, ViewPeriod
from gateway.web.sessions import Session


def layout(session: Session, period: ViewPeriod, active: str) -> dict[str, Any]:
    query = urlencode(period.query())
    nav = [
        {"href": f"{href}?{query}", "label": label, "active": name == active}
        for name, href, label in (
            ("customers", BASE, "Customers"),
            ("system", f"{BASE}/system", "System"),
        )
    ]
    return {
        "nav": nav,
        "csrf": session.csrf,
        "period": period,
        "period_labels": PERIOD_LABELS,
        "tz_name": period.tz_name,
        "period_query": query,
        "active": active,
    }
