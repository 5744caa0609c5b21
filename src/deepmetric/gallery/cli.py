"""``deepmetric gallery ...``: create a gallery and enrol, remove, list, verify, identify, re-embed from the
shell. Results print as JSON so they pipe into other tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

gallery_app = typer.Typer(no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False)

GALLERY_ARG = typer.Argument(..., help="gallery folder")
MODEL_OPTION = typer.Option(None, "--model", help="'dlib-face' or a model folder; default: the gallery's own")
FACES_OPTION = typer.Option(False, "--faces", help="a model folder trained on aligned faces: detect and align first")


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code=2)


def load_gallery_model(spec: str | None, *, faces: bool, detector: str, stored: dict[str, Any],
                       runtime: str | None = None) -> Any:
    """The model named on the command line, else the one the gallery was created with (recorded in its
    config under ``loaded_from``); ``runtime``: see ``deepmetric.models.protocol.load_model``."""
    from deepmetric.models.protocol import load_model

    if spec is None:
        origin = stored.get("loaded_from") or {}
        if not origin.get("model"):
            return None
        spec, faces, detector = origin["model"], bool(origin.get("faces")), origin.get("detector", detector)
    return load_model(spec, faces=faces, detector=detector, runtime=runtime)


def open_gallery(folder: Path, *, model: str | None = None, faces: bool = False, detector: str = "hog",
                 threshold: float | None = None, need_model: bool = True, create: bool = False,
                 runtime: str | None = None) -> Any:
    """Open (or, with ``create``, make when missing) a gallery with its model; errors exit with a message."""
    from deepmetric.gallery import Gallery
    from deepmetric.gallery.gallery import DATABASE_FILE
    from deepmetric.gallery.store import GalleryStore

    try:
        if create and not (folder / DATABASE_FILE).exists():
            return create_gallery(folder, model=model or "dlib-face", faces=faces, detector=detector,
                                  threshold=threshold, runtime=runtime)
        stored = {}
        if need_model:
            store = GalleryStore(folder / DATABASE_FILE)
            stored = store.model_config
            store.close()
        loaded = (load_gallery_model(model, faces=faces, detector=detector, stored=stored, runtime=runtime)
                  if need_model else None)
        return Gallery.open(folder, model=loaded, threshold=threshold)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:  # GalleryError is a ValueError
        _fail(error)


def _origin(model: str, faces: bool, detector: str) -> dict[str, Any]:
    """How to load the model again: recorded in the gallery so later commands need no --model."""
    return {"model": model if model == "dlib-face" else str(Path(model).resolve()), "faces": faces,
            "detector": detector}


def create_gallery(folder: Path, *, model: str, faces: bool, detector: str, threshold: float | None = None,
                   store_images: bool = True, runtime: str | None = None) -> Any:
    from deepmetric.gallery import Gallery
    from deepmetric.models.protocol import load_model

    loaded = load_model(model, faces=faces, detector=detector, runtime=runtime)
    gallery = Gallery.create(folder, model=loaded, store_images=store_images, threshold=threshold,
                             model_config={"loaded_from": _origin(model, faces, detector)})
    return gallery


@gallery_app.command("create")
def create(gallery: Path = GALLERY_ARG,
           model: str = typer.Option("dlib-face", "--model", help="'dlib-face' or a model folder"),
           faces: bool = FACES_OPTION, detector: str = typer.Option("hog", help="face detector: hog or mmod"),
           store_images: bool = typer.Option(True, help="keep enrolled photos so `reembed` can redo them")) -> None:
    """Create an empty gallery stamped with its model."""
    try:
        created = create_gallery(gallery, model=model, faces=faces, detector=detector, store_images=store_images)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        _fail(error)
    _print({"gallery": str(gallery), "embedding_dim": created.embedding_dim, "model_stamp": created.store.model_stamp})
    created.close()


@gallery_app.command("enroll")
def enroll(gallery: Path = GALLERY_ARG, identity_id: str = typer.Argument(..., help="new identity id"),
           images: list[Path] = typer.Argument(None, help="photos of the person"),
           name: str | None = typer.Option(None, help="display name (default: the id)"),
           embeddings: Path | None = typer.Option(None, help=".npy (N, D) embeddings instead of photos"),
           model: str | None = MODEL_OPTION, faces: bool = FACES_OPTION,
           face: str | None = typer.Option(None, help="which face of a group photo: 'largest' or an index, "
                                              "largest face first (a group photo is refused without it)")) -> None:
    """Enrol a new identity from photos (or embeddings); prints it, with the faces seen in each photo, once the
    write is durable."""
    from deepmetric.io import load_array

    opened = open_gallery(gallery, model=model, faces=faces, need_model=embeddings is None)
    try:
        vectors = load_array(embeddings, what="embeddings") if embeddings is not None else None
        record = opened.enroll(identity_id, images=[str(p) for p in images] if images else None,
                               embeddings=vectors, name=name, face=face)
    except (ValueError, TypeError, FileNotFoundError) as error:
        _fail(error)
    finally:
        opened.close()
    _print(record.to_dict())


@gallery_app.command("remove")
def remove(gallery: Path = GALLERY_ARG, identity_id: str = typer.Argument(...),
           template: int | None = typer.Option(None, help="remove only this template of the identity")) -> None:
    """Remove an identity, or one of its templates."""
    opened = open_gallery(gallery, need_model=False)
    try:
        if template is None:
            opened.remove(identity_id)
            _print({"deleted": identity_id})
        else:
            if template not in {t.template_id for t in opened.get(identity_id).templates}:
                raise ValueError(f"identity {identity_id!r} has no template {template}")
            _print(opened.remove_template(template).to_dict())
    except ValueError as error:
        _fail(error)
    finally:
        opened.close()


@gallery_app.command("rename")
def rename(gallery: Path = GALLERY_ARG, identity_id: str = typer.Argument(...),
           name: str = typer.Argument(...)) -> None:
    """Change an identity's display name."""
    opened = open_gallery(gallery, need_model=False)
    try:
        _print(opened.rename(identity_id, name).to_dict())
    except ValueError as error:
        _fail(error)
    finally:
        opened.close()


@gallery_app.command("list")
def list_identities(gallery: Path = GALLERY_ARG,
                    limit: int = typer.Option(100, min=0, max=1_000_000, help="at most this many"),
                    offset: int = typer.Option(0, min=0, max=2**62), prefix: str | None = typer.Option(None),
                    check: bool = typer.Option(False, help="also run the consistency checks")) -> None:
    """List identities (id, name, template count)."""
    opened = open_gallery(gallery, need_model=False)
    try:
        records = opened.list(offset=offset, limit=limit, prefix=prefix)
        out: dict[str, Any] = {"total": len(opened), "identities": [r.to_dict() for r in records]}
        if check:
            out["problems"] = opened.store.integrity_problems()
        _print(out)
    finally:
        opened.close()


@gallery_app.command("verify")
def verify(gallery: Path = GALLERY_ARG, image: Path = typer.Argument(..., help="probe photo"),
           identity_id: str = typer.Argument(..., help="claimed identity"),
           threshold: float | None = typer.Option(None, help="override the calibrated threshold"),
           model: str | None = MODEL_OPTION, faces: bool = FACES_OPTION) -> None:
    """Is this photo that identity? Prints the decision with score, threshold and margin."""
    opened = open_gallery(gallery, model=model, faces=faces, threshold=threshold)
    try:
        _print(opened.verify(str(image), identity_id).to_dict())
    except ValueError as error:
        _fail(error)
    finally:
        opened.close()


@gallery_app.command("identify")
def identify(gallery: Path = GALLERY_ARG, image: Path = typer.Argument(..., help="probe photo"),
             k: int = typer.Option(5, "-k", help="top identities to show"),
             threshold: float | None = typer.Option(None, help="override the calibrated threshold"),
             model: str | None = MODEL_OPTION, faces: bool = FACES_OPTION) -> None:
    """Who is in this photo? Prints the decision (identity or unknown) and the top matches."""
    opened = open_gallery(gallery, model=model, faces=faces, threshold=threshold)
    try:
        _print(opened.identify(str(image), k=k).to_dict())
    except ValueError as error:
        _fail(error)
    finally:
        opened.close()


@gallery_app.command("reembed")
def reembed(gallery: Path = GALLERY_ARG, model: str = typer.Option(..., "--model", help="the new model"),
            faces: bool = FACES_OPTION, detector: str = typer.Option("hog"),
            drop_without_images: bool = typer.Option(False, help="delete templates that have no stored photo")) -> None:
    """Re-embed every stored photo with a new model and restamp the gallery (one transaction)."""
    from deepmetric.models.protocol import load_model

    opened = open_gallery(gallery, need_model=False)
    try:
        loaded = load_model(model, faces=faces, detector=detector)
        summary = opened.reembed(loaded, drop_without_images=drop_without_images,
                                 model_config={"loaded_from": _origin(model, faces, detector)})
        _print(summary)
    except (ValueError, FileNotFoundError) as error:
        _fail(error)
    finally:
        opened.close()


@gallery_app.command("export")
def export(gallery: Path = GALLERY_ARG, folder: Path = typer.Argument(..., help="output folder"),
           with_images: bool = typer.Option(False, help="include the stored photos")) -> None:
    """Export identities as identities.json + vectors.npy (no pickle)."""
    opened = open_gallery(gallery, need_model=False)
    try:
        _print({"exported": len(opened), "folder": str(opened.export(folder, with_images=with_images))})
    except (ValueError, OSError) as error:  # FolderInUseError is a ValueError
        _fail(error)
    finally:
        opened.close()


@gallery_app.command("import")
def import_(gallery: Path = GALLERY_ARG, folder: Path = typer.Argument(..., help="an export folder")) -> None:
    """Import an export made with the same model (all or nothing)."""
    opened = open_gallery(gallery, need_model=False)
    try:
        _print({"imported": opened.import_from(folder)})
    except (ValueError, FileNotFoundError) as error:
        _fail(error)
    finally:
        opened.close()


def register(app: typer.Typer) -> None:
    app.add_typer(gallery_app, name="gallery", help="Keep a gallery of identities: enrol, verify, identify.")
