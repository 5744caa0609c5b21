"""The ``deepmetric`` command line: thin wrappers over the pipelines (train, evaluate, embed, index, gallery,
serve). Each sub-command's ``--help`` explains its options."""

from __future__ import annotations

import typer

from deepmetric.data import cli as data_cli
from deepmetric.eval import cli as eval_cli
from deepmetric.gallery import cli as gallery_cli
from deepmetric.index import cli as index_cli
from deepmetric.service import cli as service_cli
from deepmetric.train import cli as train_cli

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False)


@app.callback()
def _root() -> None:
    """deepmetric: train, evaluate, search and serve deep metric learning models."""


# Each module adds its commands (or a sub-app) with ``register(app)``; they import only typer at the top, so
# ``deepmetric --help`` stays fast and each command loads what it needs when it runs.
for _module in (train_cli, data_cli, eval_cli, index_cli, gallery_cli, service_cli):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
