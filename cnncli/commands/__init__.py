"""The `cnn` subcommands, one module per area; cnncli/cli.py assembles them into one app."""
