"""The package's public surface: exactly these names, sorted, each importable."""

import workflow_eventbus

PUBLIC = [
    "AckAction",
    "BrokerUnavailableError",
    "ConfigError",
    "ConflictError",
    "Delivery",
    "EventBus",
    "EventbusError",
    "NotFoundError",
    "OutboundMessage",
    "PayloadTooLargeError",
    "ProviderError",
    "PublishResult",
    "RequestError",
    "SubscribeTrigger",
    "__version__",
    "create_step",
    "trigger_data",
]


def test_all_is_exactly_the_documented_surface() -> None:
    # Adding or removing a public name means updating this list (and DESIGN.md).
    assert workflow_eventbus.__all__ == PUBLIC


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert workflow_eventbus.__all__ == sorted(workflow_eventbus.__all__)
    for name in workflow_eventbus.__all__:
        assert getattr(workflow_eventbus, name) is not None, name


def test_no_other_public_module_level_names() -> None:
    # Subpackages (core, engine, ...) appear as attributes once imported; anything
    # else without a leading underscore must be listed in __all__.
    layers = {"core", "providers", "engine", "plugin", "devservers", "bench", "cli"}
    extra = {
        n
        for n in vars(workflow_eventbus)
        if not n.startswith("_") and n not in workflow_eventbus.__all__ and n not in layers
    }
    assert extra == set()


def test_errors_share_one_root() -> None:
    for name in PUBLIC:
        obj = getattr(workflow_eventbus, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, workflow_eventbus.EventbusError), name
