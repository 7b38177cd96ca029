"""Event bus for the GoCodeAlone workflow engine: NATS JetStream and PostgreSQL."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("workflow-plugin-eventbus")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
