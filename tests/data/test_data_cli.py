import typer
from PIL import Image
from typer.testing import CliRunner

from deepmetric.data.cli import register


def make_app():
    app = typer.Typer()

    @app.callback()
    def root():
        """test root"""

    register(app)
    return app


def test_datasets_list_names_builtins():
    result = CliRunner().invoke(make_app(), ["datasets", "list"])
    assert result.exit_code == 0, result.output
    for name in ("digits", "fashion_mnist", "glyphs"):
        assert name in result.output


def test_datasets_show_writes_a_grid(tmp_path):
    output = tmp_path / "grid.png"
    result = CliRunner().invoke(make_app(), ["datasets", "show", "digits", "-o", str(output), "--split", "test",
                                             "--num-classes", "4", "--per-class", "3", "--arg", "image_size=16"])
    assert result.exit_code == 0, result.output
    assert "rows: 0; 3; 6; 9" in result.output
    image = Image.open(output)
    # 3 tiles of 16px at scale 2 plus 2px padding, 4 rows
    assert image.size == (3 * 34 + 2, 4 * 34 + 2)


def test_datasets_show_reports_bad_arguments(tmp_path):
    result = CliRunner().invoke(make_app(), ["datasets", "show", "digits", "-o", str(tmp_path / "g.png"),
                                             "--arg", "colour=red"])
    assert result.exit_code == 2 and "colour" in result.output
    assert not (tmp_path / "g.png").exists()
