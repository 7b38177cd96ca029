"""Pure helpers of the IaC provider: resource type names, config splitting, provider
ids, and the drift -> plan change translation. No I/O (unit-tested on their own).

A resource's config is its ``infra.eventbus_*`` module config as wfctl sends it
(JSON bytes). wfctl adds keys of its own (``provider``/``iac_provider`` name the
``iac.provider`` module, ``depends_on``, ``protected``, ``size``); they are split
off before the rest is decoded strictly into our config messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..._proto import iac_pb2 as ipb
from ...core.errors import ConfigError
from ...providers.base import SettingDrift

STREAM_TYPE = "infra.eventbus_stream"
CONSUMER_TYPE = "infra.eventbus_consumer"
SERVER_TYPE = "infra.eventbus_server"
RESOURCE_TYPES = (SERVER_TYPE, STREAM_TYPE, CONSUMER_TYPE)  # creation order
PROVIDER_NAME = "eventbus"  # `iac.provider {provider: eventbus}`
COMPUTE_PLAN_VERSION = "v2"  # the only lifecycle wfctl loads
OPERATIONS = ("create", "read", "update", "delete")

# Keys wfctl owns in a resource config; never part of our config messages.
WFCTL_KEYS = frozenset({"provider", "iac_provider", "depends_on", "protected", "size"})
URL_KEY = "url"  # a stream/consumer's broker URL (else the iac.provider's url)
_ID_SEPARATOR = "#"


SERVICES = (
    "IaCProviderRequired",
    "IaCProviderDriftDetector",
    "IaCProviderDriftConfigDetector",
    "ResourceDriver",
)


def service_names() -> list[str]:
    """The fully qualified gRPC services the provider registers (sorted)."""
    return sorted(ipb.DESCRIPTOR.services_by_name[name].full_name for name in SERVICES)


def load_json(raw: bytes, *, setting: str) -> dict[str, Any]:
    """A JSON object from ``*_json`` bytes (empty bytes = ``{}``)."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(setting, f"is not valid JSON: {exc}", fix="send a JSON object") from exc
    if not isinstance(value, dict):
        raise ConfigError(setting, "is not a JSON object", value=type(value).__name__)
    return value


def dump_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def split_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(our settings, the ``url`` setting or "") with wfctl's own keys removed."""
    ours = {k: v for k, v in config.items() if k not in WFCTL_KEYS and not k.startswith("_")}
    url = ours.pop(URL_KEY, "") or ""
    if not isinstance(url, str):
        raise ConfigError(URL_KEY, "must be a string", value=url)
    return ours, url


def public_url(url: str) -> str:
    """``url`` without its user, password or token: safe for ids, outputs and logs.

    Multi-host URLs (``kafka://a:9092,b:9092``, ``nats://a:4222,b:4222``, a
    libpq ``postgresql://u:p@a:5432,b:5432/db``) keep every host; query and
    fragment are dropped (they may carry credentials too).
    """
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]  # userinfo (credentials) never kept
    hosts = [_public_host(host, parts.scheme) for host in netloc.split(",") if host]
    return urlunsplit((parts.scheme, ",".join(hosts), parts.path, "", ""))


def _public_host(host: str, scheme: str) -> str:
    """One ``host[:port]`` of a netloc, lower-cased (IPv6 literals keep their brackets)."""
    parts = urlsplit(f"//{host}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(
            URL_KEY,
            "has a port that is not a number from 0 to 65535",
            value=f"{scheme}://{host}",
            fix="write each host as host:port, hosts separated by ',' "
            "(e.g. kafka://broker-1:9092,broker-2:9092)",
        ) from exc
    name = parts.hostname or ""
    if ":" in name:
        name = f"[{name}]"
    return f"{name}:{port}" if port is not None else name


def same_broker(a: str, b: str) -> bool:
    return public_url(a) == public_url(b)


@dataclass(frozen=True, slots=True)
class BrokerObject:
    """What a stream or consumer provider id names: broker URL, stream, consumer."""

    url: str  # public_url: never credentials
    stream: str
    consumer: str = ""

    def provider_id(self) -> str:
        tail = f"{self.stream}/{self.consumer}" if self.consumer else self.stream
        return f"{self.url}{_ID_SEPARATOR}{tail}"


def parse_object_id(provider_id: str, resource_type: str) -> BrokerObject:
    """The inverse of :meth:`BrokerObject.provider_id`, checked against the type."""
    url, sep, tail = provider_id.rpartition(_ID_SEPARATOR)
    stream, _, consumer = tail.partition("/")
    want_consumer = resource_type == CONSUMER_TYPE
    if not sep or not url or not stream or bool(consumer) != want_consumer:
        shape = "<url>#<stream>/<consumer>" if want_consumer else "<url>#<stream>"
        raise ConfigError(
            f"{resource_type}: provider_id",
            f"is not an id this provider made (expected {shape})",
            value=provider_id,
            fix="import the resource again or remove it from the IaC state",
        )
    return BrokerObject(url, stream, consumer)


def field_changes(drifts: Iterable[SettingDrift]) -> list[ipb.FieldChange]:
    """One FieldChange per drifted setting; force_new where the broker cannot change it."""
    return [
        ipb.FieldChange(
            path=d.setting,
            old_json=dump_json(d.current),
            new_json=dump_json(d.desired),
            force_new=d.immutable,
        )
        for d in drifts
    ]


def diff_result(changes: list[ipb.FieldChange]) -> ipb.DiffResult:
    """needs_update when anything changed; needs_replace when a change is force_new."""
    return ipb.DiffResult(
        needs_update=bool(changes),
        needs_replace=any(c.force_new for c in changes),
        changes=changes,
    )


def drift_diff(drifts: list[SettingDrift] | None, *, missing: str) -> ipb.DiffResult:
    """The diff of a live resource: ``missing`` false -> true when it is gone (apply
    recreates it), else one change per drifted setting."""
    if drifts is None:
        return diff_result([missing_change(missing)])
    return diff_result(field_changes(drifts))


def missing_change(what: str) -> ipb.FieldChange:
    """The change of a resource recorded in state but gone from the broker: recreate it."""
    return ipb.FieldChange(path=what, old_json=dump_json(False), new_json=dump_json(True))


def replaced_change(path: str, old: Any, new: Any) -> ipb.FieldChange:
    return ipb.FieldChange(
        path=path, old_json=dump_json(old), new_json=dump_json(new), force_new=True
    )


def drift_result(
    ref: ipb.ResourceRef, drifts: list[SettingDrift] | None, *, compared: bool
) -> ipb.DriftResult:
    """A DriftResult: ghost when the object is gone, config when settings differ, in
    sync when they were compared and match; unknown (not drifted) when it exists but
    no config came to compare it with."""
    result = ipb.DriftResult(name=ref.name, type=ref.type, drifted=drifts != [])
    if drifts is None:
        kind = ipb.DRIFT_CLASS_GHOST
    elif not drifts and not compared:
        kind = ipb.DRIFT_CLASS_UNKNOWN
    elif not drifts:
        kind = ipb.DRIFT_CLASS_IN_SYNC
    else:
        kind = ipb.DRIFT_CLASS_CONFIG
        result.expected_json = dump_json({d.setting: d.desired for d in drifts})
        result.actual_json = dump_json({d.setting: d.current for d in drifts})
        result.fields.extend(d.setting for d in drifts)
    setattr(result, "class", kind)  # "class" is a Python keyword: no attribute syntax
    return result


def destroy_order(refs: Iterable[ipb.ResourceRef]) -> list[ipb.ResourceRef]:
    """Consumers first, then streams, then servers (the reverse of creation)."""
    rank = {t: i for i, t in enumerate(reversed(RESOURCE_TYPES))}
    return sorted(refs, key=lambda r: rank.get(r.type, -1))
