"""Engine-side harness: runs the plugin process as the workflow engine does."""

from .callback_server import CallbackServer, LogEntry, TriggerCall
from .harness import PluginError, PluginHost, engine_environment, parse_handshake, plugin_command

__all__ = [
    "CallbackServer",
    "LogEntry",
    "PluginError",
    "PluginHost",
    "TriggerCall",
    "engine_environment",
    "parse_handshake",
    "plugin_command",
]
