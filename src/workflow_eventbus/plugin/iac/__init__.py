"""The plugin's IaC provider (``iac.provider {provider: eventbus}``): the engine's
typed IaC contract for ``infra.eventbus_server`` / ``_stream`` / ``_consumer``.

``service`` holds the gRPC servicers, ``drivers`` one driver per resource type,
``server`` the self-hosted nats-server supervisor and ``wire`` the pure helpers."""
