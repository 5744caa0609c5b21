from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deepmetric.cli import app


def run(*args: str) -> tuple[int, dict | str]:
    result = CliRunner().invoke(app, list(args))
    try:
        return result.exit_code, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result.exit_code, result.output


def test_gallery_commands_with_photos(tmp_path):
    pytest.importorskip("dlib")
    pytest.importorskip("skimage")
    from deepmetric.faces.samples import write_samples

    photos = {p.name: str(p) for p in write_samples(tmp_path / "photos")}
    gallery = str(tmp_path / "g")
    code, created = run("gallery", "create", gallery)
    assert code == 0 and created["embedding_dim"] == 128
    code, record = run("gallery", "enroll", gallery, "eileen", photos["astronaut.png"],
                       photos["astronaut_rotated_exif.jpg"], "--name", "Eileen Collins")
    assert code == 0 and record["num_templates"] == 2
    code, decision = run("gallery", "identify", gallery, photos["astronaut_moved.jpg"], "-k", "1")
    assert code == 0 and decision["identity_id"] == "eileen" and decision["threshold"] == 0.91
    code, decision = run("gallery", "verify", gallery, photos["astronaut_moved.jpg"], "eileen", "--threshold", "0.999")
    assert code == 0 and not decision["accepted"]
    code, message = run("gallery", "enroll", gallery, "nobody", photos["no_face.png"])
    assert code == 2 and "no face found" in message
    code, message = run("gallery", "enroll", gallery, "eileen", photos["astronaut.png"])
    assert code == 2 and "already exists" in message

    np.save(tmp_path / "vectors.npy", np.eye(128, dtype=np.float32)[:2])
    code, record = run("gallery", "enroll", gallery, "vectors", "--embeddings", str(tmp_path / "vectors.npy"))
    assert code == 0 and record["num_templates"] == 2
    code, listing = run("gallery", "list", gallery, "--check")
    assert code == 0 and listing["total"] == 2 and listing["problems"] == []
    code, removed = run("gallery", "remove", gallery, "vectors")
    assert code == 0 and removed == {"deleted": "vectors"}

    code, summary = run("gallery", "reembed", gallery, "--model", "dlib-face")
    assert code == 0 and summary == {"reembedded": 2, "dropped": 0, "identities": 1}
    code, message = run("gallery", "identify", gallery, photos["astronaut.png"], "--model", str(tmp_path))
    assert code != 0 and "model folder" in str(message)


def test_export_refuses_the_gallery_and_a_non_empty_folder(tmp_path):
    from deepmetric.gallery import Gallery

    gallery = str(tmp_path / "g")
    created = Gallery.create(gallery, embedding_dim=4, model_stamp="test-model")
    created.enroll("a", embeddings=np.eye(4, dtype=np.float32)[:1])
    created.close()
    code, message = run("gallery", "export", gallery, gallery)
    assert code == 2 and "error: cannot export" in message and "is the gallery" in message
    code, listed = run("gallery", "list", gallery)
    assert code == 0 and [entry["identity_id"] for entry in listed["identities"]] == ["a"]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    code, message = run("gallery", "export", gallery, str(folder))
    assert code == 2 and "refusing to replace" in message and (folder / "keep.txt").read_text() == "mine"
    code, exported = run("gallery", "export", gallery, str(tmp_path / "out"))
    assert code == 0 and exported["exported"] == 1


def test_bad_arguments_and_paths_give_one_line_errors(tmp_path):
    from deepmetric.gallery import Gallery

    gallery = str(tmp_path / "g")
    Gallery.create(gallery, embedding_dim=4, model_stamp="test-model").close()
    (tmp_path / "text.npy").write_text("not an array")
    cases = [
        (("gallery", "enroll", gallery, "b", "--embeddings", str(tmp_path / "nope.npy")), "no such embeddings file"),
        (("gallery", "enroll", gallery, "b", "--embeddings", str(tmp_path / "text.npy")), "not a NumPy .npy file"),
        (("gallery", "export", gallery, "/proc/x"), "cannot write the gallery-export folder /proc/x"),
        (("gallery", "list", gallery, "--limit", "-1"), "--limit"),
        (("gallery", "list", str(tmp_path / "none")), "no gallery at"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert ("Traceback" not in result.output and result.exception is None) or isinstance(result.exception,
                                                                                          SystemExit)
