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
