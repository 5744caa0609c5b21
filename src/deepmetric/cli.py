"""The ``deepmetric`` command line: thin wrappers over the pipelines (train, evaluate, embed, index, gallery,
serve). Each sub-command's ``--help`` explains its options."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False)

# Each module exposes ``register(app)`` adding its commands (or a sub-app). Missing modules are skipped so
# the CLI works while parts of the package are absent.
@app.callback()
def _root() -> None:
    """deepmetric: train, evaluate, search and serve deep metric learning models."""


_COMMAND_MODULES = (
    "deepmetric.train.cli",
    "deepmetric.data.cli",
    "deepmetric.eval.cli",
    "deepmetric.index.cli",
    "deepmetric.gallery.cli",
    "deepmetric.service.cli",
)


def _mount() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and name.startswith(error.name):
                continue
            raise
        module.register(app)


_mount()

if not any(getattr(c, "name", None) == "quickstart" for c in app.registered_commands):

    @app.command()
    def quickstart() -> None:
        """Run the main job on a built-in data set and print a report."""
        from deepmetric.demo import run_demo

        run_demo()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
