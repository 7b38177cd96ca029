"""Command line: the plugin launcher and its subcommands."""
