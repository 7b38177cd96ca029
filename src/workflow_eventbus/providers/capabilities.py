"""Asking a provider for an optional capability (see ``ProviderCapability`` in base.py).

    store = await require_dead_letters(provider).dead_letters()
    undelivered, unacked = await require_pending(provider).pending("ORDERS", "worker")

Each ``require_*`` returns the provider typed as having the capability, or
raises the ConfigError of :func:`missing`: it names the broker's provider, the
capability and the providers of :data:`~workflow_eventbus.providers.REGISTRY`
that have it. (One function per capability: mypy accepts no abstract class
where a generic ``type[T]`` is expected.)
"""

from __future__ import annotations

from ..core.errors import ConfigError
from ..core.names import BROKER
from . import REGISTRY
from .base import (
    HasAdmin,
    HasDeadLetters,
    HasEphemeralConsumers,
    HasPending,
    HasStatus,
    Provider,
    ProviderCapability,
)


def require_dead_letters(provider: Provider) -> HasDeadLetters:
    if isinstance(provider, HasDeadLetters):
        return provider
    raise missing(provider, HasDeadLetters)


def require_pending(provider: Provider) -> HasPending:
    if isinstance(provider, HasPending):
        return provider
    raise missing(provider, HasPending)


def require_status(provider: Provider) -> HasStatus:
    if isinstance(provider, HasStatus):
        return provider
    raise missing(provider, HasStatus)


def require_ephemeral(provider: Provider) -> HasEphemeralConsumers:
    if isinstance(provider, HasEphemeralConsumers):
        return provider
    raise missing(provider, HasEphemeralConsumers)


def require_admin(provider: Provider) -> HasAdmin:
    if isinstance(provider, HasAdmin):
        return provider
    raise missing(provider, HasAdmin)


def missing(provider: Provider, kind: type[ProviderCapability]) -> ConfigError:
    """The error for ``provider`` lacking ``kind``, naming the providers that have it."""
    holders = providers_with(kind)
    return ConfigError(
        f'{BROKER} "{provider.broker_name}": provider',
        f"has no {kind.feature.value} capability ({kind.summary})",
        value=provider.name,
        fix=(
            f"use a broker whose provider is {' or '.join(holders)}"
            if holders
            else f"no provider offers {kind.summary}"
        ),
    )


def providers_with(kind: type[ProviderCapability]) -> list[str]:
    """The providers applications may pick whose runtime class has ``kind``.

    Loads those runtime classes (the registry imports each on first use)."""
    return [
        spec.name
        for spec in REGISTRY.values()
        if spec.runs and not spec.test_double and issubclass(spec.load(), kind)
    ]
