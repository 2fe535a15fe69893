"""One module per subcommand of `gradwell`, each with `register(subparsers)`.

A command module parses and prints; the work is a library call. Output goes through
`gradwell.commands.output` so every command prints the same way.
"""
