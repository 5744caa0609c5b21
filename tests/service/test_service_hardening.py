"""The service under a hostile but fair client (issue 12): a bounded photo pool that answers 503 when full and
keeps health answering, decode cost refused from the header, private by default (keys for reads, a Host
allow-list, no photo metadata or server paths given out), bounded integers and one error format everywhere."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import ExifTags, Image

from deepmetric.data.images import ImageTooLargeError, check_image_header, load_image
from deepmetric.gallery import Gallery
from deepmetric.service.app import create_app
from service_helpers import LOCAL, MODEL_CONFIG, GatedModel, png

API_KEY = "hardening-key"
KEY = {"X-API-Key": API_KEY}
DIM = 4
def _jpeg_with_gps_and_orientation(side: int = 48) -> bytes:
    """A JPEG stored sideways (EXIF orientation 6) that says where it was taken (GPS) and with what camera."""
    pixels = np.random.default_rng(3).integers(0, 256, size=(side, side // 2, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "SecretCam"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (52.0, 22.0, 7.0)}
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.fixture
def image_model():
    from deepmetric.models import build_embedder

    return build_embedder(MODEL_CONFIG)


@pytest.fixture
def vector_gallery(tmp_path):
    gallery = Gallery.create(tmp_path / "vectors", embedding_dim=DIM, model_stamp="external")
    yield gallery
    gallery.close()


# -- item 2: denial of service ----------------------------------------------------------------------------------
def test_a_small_bomb_is_refused_from_its_header_with_the_default_limit(tmp_path, image_model):
    bomb = io.BytesIO()
    Image.new("1", (6300, 6300)).save(bomb, format="PNG")  # 4.9 kB on the wire, 40 megapixels decoded
    assert len(bomb.getvalue()) < 10_000
    with (Gallery.create(tmp_path / "g", model=image_model) as gallery,
          TestClient(create_app(gallery), base_url=LOCAL) as client):
        for path in ("/api/identify", "/api/embed"):
            refused = client.post(path, files={"image": ("bomb.png", bomb.getvalue(), "image/png")})
            assert refused.status_code == 413, refused.text
            assert "6300x6300" in refused.json()["reason"] and "max_pixels" in refused.json()["reason"]
        refused = client.post("/api/identities", data={"identity_id": "bomb"},
                              files=[("images", ("a.png", png(20))), ("images", ("bomb.png", bomb.getvalue()))])
        assert refused.status_code == 413 and "image 2 of 2" in refused.json()["reason"]
        assert len(gallery) == 0


def test_decode_cost_counts_bit_depth(tmp_path, image_model):
    deep = io.BytesIO()
    Image.fromarray(np.zeros((60, 60), dtype=np.uint16)).save(deep, format="TIFF")  # 16-bit grey: 3,600 pixels
    wide = io.BytesIO()
    Image.new("RGBA", (60, 60)).save(wide, format="PNG")  # 32 bits a pixel: costs 4,800
    with (Gallery.create(tmp_path / "g", model=image_model) as gallery,
          TestClient(create_app(gallery, max_pixels=4_000), base_url=LOCAL) as client):
        assert client.post("/api/embed", files={"image": ("grey.tif", deep.getvalue())}).status_code == 200
        refused = client.post("/api/embed", files={"image": ("rgba.png", wide.getvalue())})
        assert refused.status_code == 413 and "4800" in refused.json()["reason"], refused.text
    # One check, the decoder's: the service refuses with its very words, and load_image counts the same cost.
    with pytest.raises(ImageTooLargeError) as checked:
        check_image_header(wide.getvalue(), max_pixels=4_000)
    assert refused.json()["reason"] == str(checked.value)
    with pytest.raises(ImageTooLargeError, match="costs 4800 pixels"):
        load_image(wide.getvalue(), max_pixels=4_000)
    assert load_image(deep.getvalue(), max_pixels=4_000).shape == (60, 60, 3)


def test_a_full_pool_answers_503_with_retry_after_and_health_keeps_answering(tmp_path, image_model):
    model = GatedModel(image_model)
    with (Gallery.create(tmp_path / "g", model=model) as gallery,
          TestClient(create_app(gallery, workers=1, max_queued=0), base_url=LOCAL) as client):
        answers: dict[str, int] = {}

        def embed() -> None:
            answers["first"] = client.post("/api/embed", files={"image": ("a.png", png(24))}).status_code

        first = threading.Thread(target=embed)
        first.start()
        try:
            assert model.entered.wait(timeout=60)
            busy = client.post("/api/identify", files={"image": ("b.png", png(24))})
            assert busy.status_code == 503 and busy.json()["status"] == 503, busy.text
            assert int(busy.headers["Retry-After"]) >= 1 and "busy" in busy.json()["reason"]
            assert client.get("/api/health").status_code == 200
            assert "first" not in answers
        finally:
            model.release.set()
            first.join(timeout=60)
        assert answers["first"] == 200
        # The place is free again once the photo is done.
        assert client.post("/api/embed", files={"image": ("c.png", png(24))}).status_code == 200


def test_a_request_over_its_time_limit_gets_503_and_keeps_its_place_until_done(tmp_path, image_model):
    model = GatedModel(image_model)
    with (Gallery.create(tmp_path / "g", model=model) as gallery,
          TestClient(create_app(gallery, workers=1, max_queued=0, request_timeout=0.2), base_url=LOCAL) as client):
        try:
            late = client.post("/api/embed", files={"image": ("a.png", png(24))})
            assert late.status_code == 503 and "timed out" in late.json()["reason"], late.text
            assert "Retry-After" in late.headers
            assert model.entered.is_set()
            # The timed-out photo still runs on the one worker: a new one is refused, not queued without end.
            assert client.post("/api/embed", files={"image": ("b.png", png(24))}).status_code == 503
        finally:
            model.release.set()


def test_the_photo_wait_ends_at_the_request_deadline_not_a_fresh_limit():
    """The pool waits until the deadline the request started with (the middleware's), so time spent receiving
    the body counts: past it, a photo is refused without running; before it, the shorter of the two applies."""
    import asyncio
    import time

    from fastapi.exceptions import HTTPException

    from deepmetric.service.workers import WorkerPool

    ran = threading.Event()
    pool = WorkerPool(workers=1, max_queued=0, timeout=30)
    try:
        with pytest.raises(HTTPException) as late:
            asyncio.run(pool.for_request(time.monotonic() - 1).run(ran.set))
        assert late.value.status_code == 503 and "timed out" in late.value.detail and not ran.is_set()
        assert late.value.headers["Retry-After"]
        assert asyncio.run(pool.for_request(time.monotonic() + 30).run(lambda: 7)) == 7
        assert asyncio.run(pool.for_request(None).run(lambda: 8)) == 8
    finally:
        pool.shutdown()


def test_a_client_trickling_its_body_is_cut_off_at_the_time_limit_and_health_keeps_answering(tmp_path):
    """A slow-loris client holds a connection by sending its body a byte at a time; the server answers 408 at
    the request's time limit instead of waiting for ever (uvicorn itself has no limit on reading a body)."""
    import contextlib
    import json
    import socket
    import time
    import urllib.request

    from deepmetric.service.process import serve_in_subprocess

    Gallery.create(tmp_path / "g", embedding_dim=DIM, model_stamp="external").close()
    with serve_in_subprocess(tmp_path / "g", api_key=API_KEY, log_path=tmp_path / "server.log",
                             extra_args=("--request-timeout", "1")) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(f"POST /api/identities/embeddings HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {API_KEY}"
                         f"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{".encode())
            started = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                with urllib.request.urlopen(f"{url}/api/health", timeout=5) as health:  # meanwhile: answered
                    assert health.status == 200
                with contextlib.suppress(OSError):  # once the server answered and closed: read what it said
                    slow.sendall(b" ")  # one byte of the 1,000 promised, now and then
                slow.settimeout(0.3)
                try:
                    chunk = slow.recv(65536)
                except TimeoutError:
                    chunk = None
                if chunk == b"":
                    break
                answer += chunk or b""
                assert time.monotonic() - started < 20, "the server never cut the slow request off"
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert b"retry-after" in head.lower()
        reason = json.loads(body)
        assert reason["status"] == 408 and "did not arrive within the 1 s limit" in reason["reason"]
        with urllib.request.urlopen(urllib.request.Request(f"{url}/api/identities",
                                                           headers={"X-API-Key": API_KEY}), timeout=5) as listing:
            assert json.load(listing)["total"] == 0  # nothing was enrolled from the cut-off body


# -- item 3: privacy --------------------------------------------------------------------------------------------
def test_stored_photos_lose_their_metadata_but_stay_upright(tmp_path, image_model):
    photo = _jpeg_with_gps_and_orientation()
    assert b"SecretCam" in photo
    upright = load_image(photo)
    with (Gallery.create(tmp_path / "g", model=image_model) as gallery,
          TestClient(create_app(gallery), base_url=LOCAL) as client):
        assert client.post("/api/identities", data={"identity_id": "a"},
                           files=[("images", ("a.jpg", photo, "image/jpeg"))]).status_code == 201
        template_id = client.get("/api/identities/a").json()["templates"][0]["template_id"]
        stored = client.get(f"/api/identities/a/templates/{template_id}/image").content
        assert b"SecretCam" not in stored and b"Exif" not in stored
        with Image.open(io.BytesIO(stored)) as image:
            assert not image.getexif() and image.size == (upright.shape[1], upright.shape[0])
            assert np.array_equal(np.asarray(image.convert("RGB")), upright)  # lossless, orientation applied
        added = client.post("/api/identities/a/images", files=[("images", ("b.jpg", photo, "image/jpeg"))])
        assert added.status_code == 201
        second = added.json()["templates"][1]["template_id"]
        assert b"SecretCam" not in client.get(f"/api/identities/a/templates/{second}/image").content
    with (Gallery.open(tmp_path / "g", model=image_model) as gallery,
          TestClient(create_app(gallery, keep_photo_metadata=True), base_url=LOCAL) as client):
        assert client.post("/api/identities", data={"identity_id": "kept"},
                           files=[("images", ("a.jpg", photo, "image/jpeg"))]).status_code == 201
        template_id = client.get("/api/identities/kept").json()["templates"][0]["template_id"]
        assert client.get(f"/api/identities/kept/templates/{template_id}/image").content == photo


def test_no_server_paths_in_answers(tmp_path, image_model):
    path = tmp_path / "private-user-folder" / "me.png"
    path.parent.mkdir()
    path.write_bytes(png(20))
    with (Gallery.create(tmp_path / "g", model=image_model) as gallery,
          TestClient(create_app(gallery), base_url=LOCAL) as client):
        gallery.enroll("cli", images=[path])  # as `deepmetric gallery enroll` does
        assert gallery.get("cli").templates[0].image_path  # the gallery keeps it, for reembed
        for answer in (client.get("/api/identities/cli"), client.get("/api/identities"),
                       client.post("/api/identities/cli/images", files=[("images", ("b.png", png(20, 1)))])):
            assert answer.is_success and "private-user-folder" not in answer.text and "image_path" not in answer.text


def _readable_by_others(path, root) -> bool:
    """Whether a user other than the owner (by group or as anyone) can read ``path``: it grants read, and every
    folder from ``root`` down to it grants passage."""
    import stat

    for read, passage in ((stat.S_IRGRP, stat.S_IXGRP), (stat.S_IROTH, stat.S_IXOTH)):
        folders = [folder for folder in path.parents if folder == root or root in folder.parents]
        if path.stat().st_mode & read and all(folder.stat().st_mode & passage for folder in folders):
            return True
    return False


def test_no_file_a_served_gallery_writes_is_readable_by_other_users(tmp_path):
    """The database, its WAL, the saved index cache (it holds every template) and an export: none is readable by
    another user of the machine, whatever the umask gives new files (the index cache and exports live in 0700
    folders)."""
    gallery = Gallery.create(tmp_path / "g", embedding_dim=DIM, model_stamp="external", exact_limit=5)
    with TestClient(create_app(gallery, api_key=API_KEY), base_url=LOCAL, headers=KEY) as client:
        for number in range(12):  # past exact_limit: a saved approximate index
            vector = np.random.default_rng(number).normal(size=(1, DIM)).tolist()
            assert client.post("/api/identities/embeddings",
                               json={"identity_id": f"p{number}", "embeddings": vector}).status_code == 201
    gallery.index.sync()
    gallery.export(tmp_path / "export")
    gallery.close()
    written = [p for p in (tmp_path / "g").rglob("*") if p.is_file()]
    assert any(p.parent.name != "g" for p in written), written  # the index cache is among them
    for root in (tmp_path / "g", tmp_path / "export"):
        for path in (p for p in root.rglob("*") if p.is_file()):
            assert not _readable_by_others(path, root), f"{path.relative_to(tmp_path)} is readable by other users"


def test_host_header_allow_list(vector_gallery):
    with TestClient(create_app(vector_gallery), base_url=LOCAL) as client:
        for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
            assert client.get("/api/health", headers={"host": host}).status_code == 200, host
        for host in ("rebind.attacker.example", "rebind.attacker.example:8000", "localhost.attacker.example"):
            refused = client.get("/api/identities", headers={"host": host})
            assert refused.status_code == 400, host
            assert refused.json()["status"] == 400 and "not allowed" in refused.json()["reason"]
    with TestClient(create_app(vector_gallery, allowed_hosts=("gallery.lan",)), base_url="http://gallery.lan") as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"host": "localhost"}).status_code == 400


# -- items 6, 7, 10: strict input and one error format -----------------------------------------------------------
def test_huge_integers_get_422_not_500(vector_gallery):
    vector_gallery.enroll("x", embeddings=np.eye(DIM)[:1])
    huge = "1180591620717411303424"
    with TestClient(create_app(vector_gallery), base_url=LOCAL, raise_server_exceptions=False) as client:
        for response in (client.get("/api/identities", params={"offset": "9223372036854775808"}),
                         client.get(f"/api/identities/x/templates/{huge}/image"),
                         client.delete(f"/api/identities/x/templates/{huge}")):
            assert response.status_code == 422, response.text
            assert response.json()["status"] == 422 and response.json()["reason"].startswith("invalid request")
        assert client.get("/api/identities", params={"offset": str(2**63 - 1)}).status_code == 200


def _chunks(total: int):
    for _ in range(total // 65536):
        yield b"\0" * 65536


def test_every_error_has_the_json_format_and_chunked_oversize_is_413(tmp_path, image_model):
    with (Gallery.create(tmp_path / "g", model=image_model) as gallery,
          TestClient(create_app(gallery, max_upload_bytes=200_000), base_url=LOCAL,
                     raise_server_exceptions=False) as client):
        boundary = {"content-type": "multipart/form-data; boundary=xyz"}
        answers = {
            "multipart": client.post("/api/identify", headers=boundary, content=b"--xyz\r\nbroken"),
            "chunked": client.post("/api/identify", headers=boundary, content=_chunks(1_000_000)),
            "not found": client.get("/nothing"),
            "method": client.delete("/api/health"),
            "validation": client.post("/api/identify/embedding", json={"k": "many"}),
            "text for a file": client.post("/api/identify", data={"image": "just text"}),
        }
        for name, answer in answers.items():
            body = answer.json()
            assert set(body) == {"status", "reason"} and body["status"] == answer.status_code, (name, body)
        assert answers["chunked"].status_code == 413, answers["chunked"].text
        assert answers["multipart"].status_code in (400, 422)
        reason = answers["text for a file"].json()["reason"]
        assert answers["text for a file"].status_code == 422 and "image" in reason and "file" in reason
        assert "UploadFile" not in reason and "<class" not in reason


def test_a_crash_is_a_json_500(tmp_path, image_model):
    with (Gallery.create(tmp_path / "g", model=GatedModel(image_model, crash=True)) as gallery,
          TestClient(create_app(gallery), base_url=LOCAL, raise_server_exceptions=False) as client):
        crashed = client.post("/api/embed", files={"image": ("a.png", png(24))})
    assert crashed.status_code == 500 and crashed.json() == {
        "status": 500, "reason": "internal error (RuntimeError); the server log has the details"}


def test_openapi_documents_the_keys_and_every_error_with_its_schema(vector_gallery):
    spec = create_app(vector_gallery, api_key=API_KEY).openapi()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["APIKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": schemes["APIKey"]["description"]}
    assert schemes["Bearer"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # 422 is {status, reason} like the rest
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    identify = spec["paths"]["/api/identify"]["post"]
    assert {"APIKey": []} in identify["security"]
    assert {"400", "401", "403", "409", "413", "415", "422", "500", "503"} <= set(identify["responses"])
    assert "404" in spec["paths"]["/api/identities/{identity_id}"]["get"]["responses"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == error_ref, (path, method, status)
    assert "security" not in spec["paths"]["/api/health"]["get"]
