"""Account administration, shared by the CLI (`tollbooth customers|keys`) and the admin HTTP
API (`/admin/...`): one implementation of the rules, two front ends.

Rules enforced here: a customer's tier must be one of the config's tiers (default: the first);
keys belong to an existing customer and are shown in plain text exactly once, at creation;
nothing returned ever contains a key or its hash. Errors are `AdminError`s whose `status`
says what an HTTP caller should get; the CLI prints their message.
"""

from __future__ import annotations

from typing import Any

from gateway.config import Settings
from storage.accounts import (
    KEY_PREFIX,
    AccountError,
    AccountStore,
    ApiKey,
    Customer,
    CustomerExistsError,
    UnknownCustomerError,
    UnknownKeyError,
)


class AdminError(Exception):
    status = 400


class UnknownTierError(AdminError):
    status = 400


class ConflictError(AdminError):
    status = 409


class NotFoundError(AdminError):
    status = 404


def _translate(exc: AccountError) -> AdminError:
    if isinstance(exc, CustomerExistsError):
        return ConflictError(str(exc))
    if isinstance(exc, UnknownCustomerError | UnknownKeyError):
        return NotFoundError(str(exc))
    return AdminError(str(exc))


def customer_json(customer: Customer) -> dict[str, Any]:
    return {
        "id": customer.id,
        "name": customer.name,
        "email": customer.email,
        "tier": customer.tier,
        "stripe_customer_id": customer.stripe_customer_id,
        "suspended": customer.suspended,
        "created_at": customer.created_at.isoformat(),
        "updated_at": customer.updated_at.isoformat(),
    }


def key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "prefix": KEY_PREFIX + key.prefix,
        "customer_id": key.customer_id,
        "project_id": key.project_id,
        "user_id": key.user_id,
        "name": key.name,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


class Admin:
    def __init__(self, accounts: AccountStore, settings: Settings) -> None:
        self._accounts = accounts
        self._settings = settings

    def check_tier(self, tier: str) -> str:
        if tier not in self._settings.tiers:
            known = ", ".join(self._settings.tiers)
            raise UnknownTierError(
                f"unknown tier {tier!r}; {self._settings.source_name()} defines: {known}"
            )
        return tier

    async def create_customer(
        self,
        customer_id: str,
        *,
        tier: str | None = None,
        name: str | None = None,
        email: str | None = None,
        stripe_customer_id: str | None = None,
    ) -> Customer:
        chosen = self.check_tier(tier or next(iter(self._settings.tiers)))
        try:
            return await self._accounts.create_customer(
                customer_id,
                tier=chosen,
                name=name,
                email=email,
                stripe_customer_id=stripe_customer_id,
            )
        except AccountError as exc:
            raise _translate(exc) from None

    async def update_customer(
        self, customer_id: str, changes: dict[str, str | bool | None]
    ) -> Customer:
        if not changes:
            raise AdminError("nothing to update")
        allowed = {"tier", "name", "email", "stripe_customer_id", "suspended"}
        unknown = set(changes) - allowed
        if unknown:
            raise AdminError(f"cannot change {', '.join(sorted(unknown))}")
        if "tier" in changes:
            self.check_tier(str(changes["tier"]))
        try:
            return await self._accounts.update_customer(customer_id, **changes)
        except AccountError as exc:
            raise _translate(exc) from None

    async def get_customer(self, customer_id: str) -> Customer:
        customer = await self._accounts.get_customer(customer_id)
        if customer is None:
            raise NotFoundError(f"no customer {customer_id!r}")
        return customer

    async def list_customers(self) -> list[Customer]:
        return await self._accounts.list_customers()

    async def create_key(
        self,
        customer_id: str,
        *,
        project_id: str | None = None,
        user_id: str | None = None,
        name: str | None = None,
    ) -> tuple[ApiKey, str]:
        try:
            return await self._accounts.create_key(
                customer_id, project_id=project_id, user_id=user_id, name=name
            )
        except AccountError as exc:
            raise _translate(exc) from None

    async def list_keys(self, customer_id: str | None = None) -> list[ApiKey]:
        return await self._accounts.list_keys(customer_id)

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False if it was revoked already (revoking is idempotent)."""
        try:
            return await self._accounts.revoke_key(key_id)
        except AccountError as exc:
            raise _translate(exc) from None
