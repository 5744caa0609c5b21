"""The ``deepmetric`` command line: thin wrappers over the pipelines (train, evaluate, embed, index, gallery,
serve). Each sub-command's ``--help`` explains its options."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def quickstart() -> None:
    """Run the main job on a built-in data set and print a report."""
    from deepmetric.demo import run_demo

    run_demo()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
