"""The ``deepmetric`` command line: thin wrappers over the pipelines (train, evaluate, embed, index, gallery,
serve). Each sub-command's ``--help`` explains its options."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from deepmetric.crossmodal import cli as crossmodal_cli
from deepmetric.data import cli as data_cli
from deepmetric.deploy import cli as deploy_cli
from deepmetric.eval import cli as eval_cli
from deepmetric.gallery import cli as gallery_cli
from deepmetric.index import cli as index_cli
from deepmetric.landmarks import cli as landmarks_cli
from deepmetric.service import cli as service_cli
from deepmetric.train import cli as train_cli

REPORT_HINT = ("this is a bug in deepmetric, not in how it was called: please report it with the traceback that "
               "follows and the command line")


class _UserErrorGroup(TyperGroup):
    """The one place that turns errors a user can fix (a wrong value or type, a missing or unreadable path) into
    one line ``error: <message>`` and exit code 2, so no command shows a traceback for them; any other exception
    stays visible, traceback included, with a hint to report it."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # a command that already reported its error, or click's usage error (typer ships its own click)
        except (ValueError, TypeError, OSError) as error:
            typer.echo(f"error: {error or type(error).__name__}", err=True)
            raise typer.Exit(code=2) from None
        except Exception:
            print(f"error: unexpected failure; {REPORT_HINT}", file=sys.stderr)
            raise


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False,
                  cls=_UserErrorGroup)


@app.callback()
def _root() -> None:
    """deepmetric: train, evaluate, search and serve deep metric learning models."""


# Each module adds its commands (or a sub-app) with ``register(app)``; they import only typer at the top, so
# ``deepmetric --help`` stays fast and each command loads what it needs when it runs.
for _module in (train_cli, data_cli, eval_cli, index_cli, gallery_cli, service_cli, deploy_cli, crossmodal_cli,
                landmarks_cli):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
