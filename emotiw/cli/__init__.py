"""Layer 7, the command line: `emotiw <job> ...`.

- `commands`: the parser and `main`, one subcommand per job;
- `flags`: a config dataclass -> its `--flags` and their help (from the `Attributes:` docs);
- `modality_flags`: each registered modality's `--<modality>-<field>` flags.
"""


def main(argv: list[str] | None = None) -> int:
    """The console script `emotiw` (imports the parser only when it runs)."""
    from emotiw.cli.commands import main as run

    return run(argv)


__all__ = ["main"]
