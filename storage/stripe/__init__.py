"""Stripe Billing: the SDK client, meter sync, reconciliation and webhooks."""
