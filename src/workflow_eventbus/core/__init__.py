"""Pure rules, no I/O: capability names and messages, config decoding and validation,
the subject grammar, defaults, header names, the dead-letter format, the errors."""
