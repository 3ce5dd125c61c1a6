"""The key each generated image stores, and the check that a manifest's images are its own.

`dspo generate` and `dspo edit` write every PNG with its key (the PNG text chunk
:data:`KEY_CHUNK`: everything that made the image) and list the same key in the manifest's
``key`` column. An image file is the manifest's image only when it is a PNG that holds that key
and decodes in full; a PNG copied in from another model, or cut short, is not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from PIL import Image, ImageFile

# The PNG text chunk holding an image's key.
KEY_CHUNK = "dspo_key"
# How many bad images an error names before it only counts the rest.
SHOWN = 5


@contextlib.contextmanager
def strict_decoding() -> Iterator[None]:
    """PIL refuses truncated files inside (other code may let it accept them)."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def stored_key(path: Path) -> str | None:
    """The key a PNG at ``path`` stores (None without one), after decoding it in full.

    Raises ``OSError`` (or PIL's ``SyntaxError``/``ValueError``) when the file is missing, not
    a PNG, or cannot be decoded in full.
    """
    with strict_decoding(), Image.open(path) as image:
        if image.format != "PNG":
            raise ValueError(f"it is a {image.format} file, not a PNG")
        image.load()
        return image.info.get(KEY_CHUNK)


def image_problem(path: Path, key: str) -> str | None:
    """Why ``path`` is not a whole PNG made with ``key``; None when it is."""
    if not path.is_file():
        return "is missing"
    try:
        found = stored_key(path)
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for damaged files
        return f"cannot be read ({type(error).__name__}: {error})"
    if found is None:
        return f"holds no {KEY_CHUNK} where the manifest lists {key[:16]}"
    if found != key:
        return f"holds key {found[:16]} where the manifest lists {key[:16]}"
    return None


def key_owners(images_root: Path) -> dict[str, str]:
    """Which model and prompt set each key under ``images_root/MODEL/SET/manifest.parquet`` is."""
    owners: dict[str, str] = {}
    for manifest in sorted(images_root.glob("*/*/manifest.parquet")):
        try:
            keys = pd.read_parquet(manifest, columns=["key"])["key"]
        except Exception:  # an unreadable or keyless manifest owns nothing
            continue
        model, prompt_set = manifest.parent.parent.name, manifest.parent.name
        for key in keys:
            owners.setdefault(str(key), f"model {model}, prompt set {prompt_set} ({manifest})")
    return owners


def check_manifest_images(manifest: pd.DataFrame, source: Path, model: str) -> None:
    """Fail, naming each bad file, unless every image ``source`` (a manifest) lists is whole
    and holds the key listed for it.

    A file holding another manifest's key (found among the manifests beside this model's
    folder, ``results/images/MODEL/SET/manifest.parquet``) is named with the model and prompt
    set it belongs to.
    """
    if "key" not in manifest.columns:
        raise ValueError(
            f"{source} has no `key` column, so its images cannot be checked; "
            "make them again with `dspo generate`"
        )
    image_dir = source.parent
    problems = [
        (image_dir / str(row.path), problem)
        for row in manifest.itertuples(index=False)
        if (problem := image_problem(image_dir / str(row.path), str(row.key))) is not None
    ]
    if not problems:
        return
    owners = key_owners(image_dir.parent.parent)
    lines = [f"  {path} {problem}{_owner(path, owners)}" for path, problem in problems[:SHOWN]]
    if len(problems) > SHOWN:
        lines.append(f"  ... and {len(problems) - SHOWN} more")
    prompt_set = ", ".join(sorted(map(str, manifest["prompt_set"].unique())))
    raise ValueError(
        f"{len(problems)} of the {len(manifest)} images {source} lists for model {model}, "
        f"prompt set {prompt_set}, are not the images generated for it:\n"
        + "\n".join(lines)
        + "\nnothing was scored; make them again (`dspo generate` remakes every image whose "
        "key differs; in the workflow, `snakemake --forcerun generate`)"
    )


def _owner(path: Path, owners: dict[str, str]) -> str:
    """``: it is the image of ...`` when the key ``path`` holds is another manifest's."""
    try:
        owner = owners.get(str(stored_key(path)))
    except (OSError, SyntaxError, ValueError):
        return ""
    return f": it is the image of {owner}" if owner else ""
