"""Output files and folders: checked before any work starts, so a run never fails at its end on a path that could
not be written. Each error is one ValueError line naming the option the user gave (`option`)."""

import os
from pathlib import Path


def make_parent_folder(path, option: str) -> Path:
    """Create the folder that will hold the output file `path` given as `option`; ValueError when it cannot be."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a folder should be, no permission...
        raise ValueError(f"{option} {path}: cannot create the folder {path.parent} ({error.strerror})") from None
    return path


def make_weights_readable(folder: Path) -> None:
    """Give the .safetensors files in `folder` the mode any new file gets (0666 less the umask): safetensors
    writes them with mode 0600, which would leave the weights unreadable to everyone else."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).rglob("*.safetensors"):
        path.chmod(0o666 & ~umask)


def output_file(path, option: str) -> Path:
    """An output file `path` given as `option`, checked before any work: its folder created, and the path not an
    existing folder; ValueError otherwise."""
    path = make_parent_folder(path, option)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder, expected a file name")
    return path


def output_folder(path, force: bool, option: str | None = None) -> Path:
    """The folder `path` (given as `option`, if an option) that a model or data will be written to, checked before
    any work: refused when a file stands where it or a folder above it should be (writing would fail at the end),
    or when it already holds files and not `force` (nothing is overwritten unasked); ValueError. Missing folders
    are left for the writing to create."""
    path = Path(path)
    named = f"{option} {path}" if option else str(path)
    for folder in (path, *path.parents):
        if not folder.exists():
            continue
        if folder.is_dir():  # the nearest existing folder: what lies below it can be created
            break
        if folder == path:
            raise ValueError(f"{named}: exists and is not a folder")
        raise ValueError(f"{named}: cannot create the folder {path}, {folder} is a file")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ValueError(f"{named} already holds files: pass --force to write into it anyway")
    return path
