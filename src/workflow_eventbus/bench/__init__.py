"""``workflow-plugin-eventbus bench``: every plugin path against the raw clients, same run.

Each scenario is paired with the raw-client baseline that does the unavoidable
work of that path (the nats-py calls, one gRPC hop, the SQL round trips); the
two run back to back, alternating, in several rounds, and the reported ratio
is the median of the per-round ratios, so drift in the machine's load hits
both sides alike. See docs/performance.md.
"""
