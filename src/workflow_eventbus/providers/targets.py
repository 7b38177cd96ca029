"""Where a broker runs: ``deploy_target`` and ``broker_target`` values, spelled as the Go
plugin spells them. Which provider takes which target is in the registry
(:data:`workflow_eventbus.providers.REGISTRY`)."""

from __future__ import annotations

DIGITALOCEAN_APP_PLATFORM = "digitalocean.app_platform"
DIGITALOCEAN_MANAGED_KAFKA = "digitalocean.managed_kafka"
AWS_ECS = "aws.ecs"
AWS_EKS = "aws.eks"
AWS_MSK = "aws.msk"
AWS_KINESIS = "aws.kinesis"
KUBERNETES = "kubernetes"
SELF_HOSTED = "self_hosted"
IN_PROCESS = "in_process"  # broker_target of pgchannel: the broker is the plugin process

# What the IaC generator (engine/iac, the ``infra`` command) produces for a provider:
# ProviderSpec.iac. "" = nothing (the test double is refused).
NATS_SERVER = "nats-server"  # a NATS server or cluster on the broker's deploy target
POSTGRES_SCHEMA = "postgres-schema"  # tables in the operator's PostgreSQL: its migrations
MANAGED = "managed"  # a managed service the operator provisions; only stated, not declared
