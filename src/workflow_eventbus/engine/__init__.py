"""What the engine runs: the bus (registries of one engine), the broker, stream and
consumer modules, the steps, the subscribe trigger and its loop, dead-letter replay, IaC
declarations. Talks to brokers only through :mod:`..providers`."""
