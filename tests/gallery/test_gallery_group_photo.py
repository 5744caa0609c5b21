"""Enrolling from a group photo: refused unless the caller says which face, and the faces seen are always told
(issue 12, item 5). The group photo is two copies of the public-domain astronaut sample pasted side by side."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deepmetric.cli import app
from deepmetric.faces.detection import NoFaceError
from deepmetric.gallery import Gallery, GalleryError


@pytest.fixture(scope="module")
def face_model():
    pytest.importorskip("dlib")
    pytest.importorskip("skimage")
    from deepmetric.faces import DlibFaceEmbedder

    return DlibFaceEmbedder()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    pytest.importorskip("skimage")
    from PIL import Image

    from deepmetric.faces.samples import write_samples

    folder = tmp_path_factory.mktemp("photos")
    files = {path.name: path for path in write_samples(folder)}
    # Two copies side by side, the right one mirrored and smaller, so "largest" and index 1 are different faces.
    with Image.open(files["astronaut.png"]) as single:
        left = single.convert("RGB")
    right = left.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((320, 320))
    group = Image.new("RGB", (left.width + right.width, left.height), "white")
    group.paste(left, (0, 0))
    group.paste(right, (left.width, 96))
    group.save(folder / "group.png")
    return {**files, "group.png": folder / "group.png"}


def _faces(face_model, path):
    return face_model.embed(str(path), all_faces=True)


def test_group_photo_refused_without_a_face_choice(tmp_path, face_model, photos):
    with Gallery.create(tmp_path / "g", model=face_model) as gallery:
        with pytest.raises(ValueError, match=r"the image \(group.png\): 2 faces found; .*face='largest' or a face "
                                             r"index 0-1 \(largest first\)"):
            gallery.enroll("crowd", images=[str(photos["group.png"])])
        assert "crowd" not in gallery and len(gallery) == 0
        # Beside a good photo, the group photo is named by its position.
        with pytest.raises(ValueError, match=r"image 2 of 2 \(group.png\): 2 faces found"):
            gallery.enroll("crowd", images=[str(photos["astronaut.png"]), str(photos["group.png"])])
        assert len(gallery) == 0


def test_group_photo_enrols_the_chosen_face_and_counts_faces(tmp_path, face_model, photos):
    found = _faces(face_model, photos["group.png"])
    assert len(found.faces) == 2 and found.faces[0].area > found.faces[1].area
    assert found.faces[0].box[0] < found.faces[1].box[0]  # the larger face is the left copy
    with Gallery.create(tmp_path / "g", model=face_model) as gallery:
        largest = gallery.enroll("largest", images=[str(photos["group.png"])], face="largest")
        second = gallery.enroll("second", images=[str(photos["group.png"])], face=1)
        single = gallery.enroll("single", images=[str(photos["astronaut.png"])])
        assert largest.faces_seen == [2] and second.faces_seen == [2] and single.faces_seen == [1]
        assert largest.to_dict()["faces_seen"] == [2]
        vectors = {template["identity_id"]: template["vector"] for template in gallery.store.templates()}
        assert float(vectors["largest"] @ found.embeddings[0]) == pytest.approx(1.0, abs=1e-5)
        assert float(vectors["second"] @ found.embeddings[1]) == pytest.approx(1.0, abs=1e-5)
        assert float(vectors["largest"] @ vectors["second"]) < 0.9999  # two different crops

        gallery.add("single", images=[str(photos["group.png"])], face=0)
        assert gallery.get("single").num_templates == 2
        with pytest.raises(ValueError, match="2 faces found"):
            gallery.add("single", images=[str(photos["group.png"])])
        with pytest.raises(ValueError, match=r"face index 2 is out of range: 2 faces found \(indexes 0-1"):
            gallery.enroll("third", images=[str(photos["group.png"])], face=2)
        with pytest.raises(GalleryError, match="face must be 'largest' or a face index >= 0"):
            gallery.enroll("third", images=[str(photos["group.png"])], face="biggest")
        with pytest.raises(TypeError, match="face must be None, 'largest' or a face index"):
            gallery.enroll("third", images=[str(photos["group.png"])], face=1.5)
        assert "third" not in gallery and gallery.get("single").num_templates == 2


def test_no_face_message_names_the_image(tmp_path, face_model, photos):
    with Gallery.create(tmp_path / "g", model=face_model) as gallery:
        with pytest.raises(NoFaceError, match=r"^image 2 of 2 \(no_face.png\): no face found$"):
            gallery.enroll("nobody", images=[str(photos["astronaut.png"]), str(photos["no_face.png"])])
        with pytest.raises(NoFaceError, match=r"^no face found in the image$"):
            gallery.identify(np.asarray(_faces(face_model, photos["no_face.png"]).image), threshold=0.5)


def test_whole_image_model_has_no_face_choice(tmp_path):
    with Gallery.create(tmp_path / "g", embedding_dim=3, model_stamp="demo") as gallery:
        with pytest.raises(GalleryError, match="does not apply to embeddings"):
            gallery.enroll("a", embeddings=[[1.0, 0.0, 0.0]], face="largest")
        assert gallery.enroll("a", embeddings=[[1.0, 0.0, 0.0]]).faces_seen is None


def test_cli_enroll_face_option(tmp_path, face_model, photos):
    runner = CliRunner()
    folder = tmp_path / "g"
    Gallery.create(folder, model=face_model).close()
    refused = runner.invoke(app, ["gallery", "enroll", str(folder), "crowd", str(photos["group.png"]),
                                  "--model", "dlib-face"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "error: the image (group.png): 2 faces found" in refused.output
    enrolled = runner.invoke(app, ["gallery", "enroll", str(folder), "crowd", str(photos["group.png"]),
                                   "--model", "dlib-face", "--face", "largest"])
    assert enrolled.exit_code == 0, enrolled.output
    assert json.loads(enrolled.stdout)["faces_seen"] == [2]
    indexed = runner.invoke(app, ["gallery", "enroll", str(folder), "right", str(photos["group.png"]),
                                  "--model", "dlib-face", "--face", "1"])
    assert indexed.exit_code == 0 and json.loads(indexed.stdout)["faces_seen"] == [2]
    wrong = runner.invoke(app, ["gallery", "enroll", str(folder), "x", str(photos["group.png"]),
                                "--model", "dlib-face", "--face", "-1"])
    assert wrong.exit_code == 2 and "error: face must be 'largest' or a face index >= 0" in wrong.output


def test_service_enrolment_refuses_a_group_photo_and_counts_faces(tmp_path, face_model, photos):
    from fastapi.testclient import TestClient

    from deepmetric.service.app import create_app

    group = ("images", ("group.png", photos["group.png"].read_bytes(), "image/png"))
    with Gallery.create(tmp_path / "g", model=face_model) as gallery, \
            TestClient(create_app(gallery, api_key="key-123"), base_url="http://localhost",
                       headers={"X-API-Key": "key-123"}) as client:
        refused = client.post("/api/identities", data={"identity_id": "crowd"}, files=[group])
        assert refused.status_code == 422 and "2 faces found" in refused.json()["reason"], refused.text
        assert "crowd" not in gallery
        wrong = client.post("/api/identities", data={"identity_id": "crowd", "face": "biggest"}, files=[group])
        assert wrong.status_code == 422 and wrong.json()["reason"].startswith("invalid request: face")
        enrolled = client.post("/api/identities", data={"identity_id": "crowd", "face": "largest"}, files=[group])
        assert enrolled.status_code == 201, enrolled.text
        assert enrolled.json()["faces_seen"] == [2] and enrolled.json()["num_templates"] == 1
        second = client.post("/api/identities", data={"identity_id": "right", "face": "1"}, files=[group])
        assert second.status_code == 201 and second.json()["faces_seen"] == [2]
