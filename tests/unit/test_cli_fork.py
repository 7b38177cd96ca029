"""The CLI process forks children with gRPC's fork handlers off (see workflow_eventbus.cli).

Under uvloop a subprocess is a real fork(); with the handlers on, gRPC logs
"skipping fork() handlers" for each fork made while its threads are busy, and a
CI bench run lost a plugin child to SIGSEGV in that window.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    if sys.argv[1] == "cli":
        import workflow_eventbus.cli.main  # noqa: F401
    import grpc, uvloop

    async def main() -> None:
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

        async def busy() -> None:
            while True:
                try:
                    await channel.unary_unary("/x.Y/Z")(b"", timeout=1)
                except grpc.aio.AioRpcError:
                    pass

        tasks = [asyncio.create_task(busy()) for _ in range(8)]
        codes = []
        for _ in range(40):
            child = await asyncio.create_subprocess_exec("true")
            codes.append(await child.wait())
        print("children-failed", sum(code != 0 for code in codes))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await channel.close()
        await server.stop(None)

    uvloop.run(main())
    """
)


def _forks(mode: str) -> tuple[int, int]:
    """(gRPC's fork-handler warnings, children of `true` that did not exit 0)."""
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    failed = int(done.stdout.split("children-failed", 1)[1].split()[0])
    return done.stderr.count("skipping fork() handlers"), failed


def test_grpc_alone_runs_its_fork_handlers_under_uvloop() -> None:
    # The control: without our CLI package the handlers are on (grpcio's default).
    warnings, _ = _forks("bare")
    assert warnings > 0


def test_cli_process_forks_without_grpc_fork_handlers() -> None:
    assert _forks("cli") == (0, 0)
