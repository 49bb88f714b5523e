"""YAML → a validated `Config`: the schema, reading files (lines, `extends`, `--set`), key paths, blocks,
the YAML reader, the editor schema, and the Keras vocabulary a config may name."""
