"""Command line: the plugin launcher and its subcommands.

Importing this package turns gRPC's fork handlers off for the process
(``GRPC_ENABLE_FORK_SUPPORT=false`` unless the environment says otherwise),
before any subcommand loads grpc. Our commands only fork to exec a child
(nats-server, PostgreSQL, the plugin, the engine), and under uvloop that fork
is a real ``fork()`` that runs gRPC's handlers while gRPC threads are busy: a CI
run of the bench lost a plugin child to SIGSEGV (status -11) there, before its
``exec``. The handlers exist for children that keep using gRPC without exec,
which nothing here does.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
