"""The plugin process: go-plugin transport and the PluginService around the library."""
