"""The installed distribution's version (``0.0.0`` in a source tree without install)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("workflow-plugin-eventbus")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"
