"""Where a corpus and its sources live: a local folder or object storage, behind one small path type.

Local paths stay `pathlib.Path`: everything that worked on a folder works as before. A URI such as
`s3://bucket/prefix` (or gs://, hdfs://, whatever pyarrow's filesystems or an installed fsspec backend
reach) becomes a `RemotePath`, which offers the part of Path's interface the build and the readers use
(`/`, name, parent, exists, is_dir, glob, read_bytes, unlink, ...), through pyarrow's filesystem layer.

S3 takes its endpoint, region and credentials from the standard AWS variables and files
(AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION or AWS_REGION, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or ~/.aws/credentials). gs:// goes through pyarrow's GCS client
(Google's default credentials; STORAGE_EMULATOR_HOST points it at a local emulator, as it does Google's
own libraries). A scheme pyarrow lacks goes through fsspec (fsspec's memory:// in the tests). An object is written by one PUT (or
one multipart upload), which S3 makes visible only when it is complete, so nothing is written to a
temporary name first. Errors are StorageError: one line naming the URI, with no credential in it.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Union
from urllib.parse import urlsplit

from cosmo_data.schemas.redact import redact

LOCAL_SCHEMES = ("", "file")
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")


class StorageError(Exception):
    """Object storage refused or cannot be reached; the message is one line and holds no secret: a URI in
    it loses its userinfo and presigned parameters (schemas/redact.py)."""

    def __init__(self, message: str):
        super().__init__(redact(message))


def is_remote(value: object) -> bool:
    if isinstance(value, RemotePath):
        return True
    if isinstance(value, Path):
        return False
    return urlsplit(str(value)).scheme.lower() not in LOCAL_SCHEMES and "://" in str(value)


# `s3:/bucket` (one slash): a URI mistyped, which would otherwise be a local folder named `s3:`. A scheme
# of two letters or more, so that a Windows drive (C:/data) is not taken for one.
_ONE_SLASH_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/(?!/)")


def location(value: Union[str, os.PathLike, RemotePath]) -> Union[Path, RemotePath]:
    """A Path for a local path (or file:// URI), a RemotePath for any other URI. A URI with credentials in it
    (s3://KEY:SECRET@bucket) is refused: they would be printed in every message and written where the
    URI is, and the filesystems take theirs from the environment (AWS variables, Google's credentials)."""
    if isinstance(value, (Path, RemotePath)):
        return value
    text = str(value)
    if not is_remote(text):
        if _ONE_SLASH_URI.match(text) and not text.lower().startswith("file:"):
            scheme, rest = text.split(":/", 1)
            raise StorageError(f"{text} is not a URI (one slash after '{scheme}:'): write {scheme}://{rest}")
        return Path(text[len("file://") :] if text.lower().startswith("file://") else text)
    parts = urlsplit(text)
    if "@" in parts.netloc:
        raise StorageError(
            f"{text}: credentials in a storage URI are not used; give them as the environment does "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or Google's default credentials)"
        )
    return RemotePath(parts.scheme.lower(), (parts.netloc + "/" + parts.path.strip("/")).rstrip("/"))


def scrub(message: str) -> str:
    """The message on one line, with any credential the environment holds blanked out."""
    for name in SECRET_VARIABLES:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            message = message.replace(secret, "***")
    return " ".join(message.split())


def _aws_error(exc: BaseException) -> str:
    text = scrub(str(exc))
    match = re.search(r"AWS Error (\w+)[^:]*: (.*)", text)
    if match:
        kind, detail = match.groups()
        return f"{kind.replace('_', ' ').lower()}: {detail.split(' (Request ID')[0].strip()}"
    return text


@lru_cache(maxsize=8)
def filesystem(scheme: str):
    """The pyarrow filesystem for a scheme, one per process (S3 clients are costly to make)."""
    import pyarrow.fs as pafs

    if scheme in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options: dict[str, object] = {}
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            options["region"] = region
        if endpoint:
            parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            options["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
            options["scheme"] = parts.scheme
        # Only as many retries as it takes to ride out a blip: a wrong endpoint should fail in seconds.
        options["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=3)
        options["connect_timeout"] = 10
        options["request_timeout"] = 60
        return pafs.S3FileSystem(**options)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if scheme in ("gs", "gcs") and emulator:
        # Google's client libraries' variable for a local GCS (an emulator): plain HTTP, no credentials.
        # Otherwise pyarrow's GCS client finds the credentials as Google's libraries do.
        parts = urlsplit(emulator if "://" in emulator else f"http://{emulator}")
        return pafs.GcsFileSystem(
            anonymous=True, endpoint_override=parts.netloc, scheme=parts.scheme, retry_time_limit=timedelta(seconds=10)
        )
    try:
        return pafs.FileSystem.from_uri(f"{scheme}://")[0]
    except Exception:
        pass
    try:
        import fsspec

        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))
    except Exception as exc:
        raise StorageError(f"no filesystem for {scheme}:// (pyarrow has none, fsspec cannot load one: {exc})") from None


class RemotePath:
    """A file or prefix on object storage, as `scheme://bucket/key`; a subset of pathlib.Path."""

    def __init__(self, scheme: str, path: str):
        self.scheme = scheme
        self.path = path.strip("/")

    # --- names ---
    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (other.scheme, other.path) == (self.scheme, self.path)

    def __hash__(self) -> int:
        return hash((self.scheme, self.path))

    def __lt__(self, other: RemotePath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, other: str) -> RemotePath:
        return RemotePath(self.scheme, posixpath.join(self.path, str(other)))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.scheme, posixpath.dirname(self.path))

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    def relative_to(self, other: RemotePath) -> Path:
        return Path(posixpath.relpath(self.path, other.path))

    def resolve(self) -> RemotePath:
        return self

    @property
    def fs(self):
        return filesystem(self.scheme)

    # --- queries ---
    def _call(self, verb: str, action):
        try:
            return action()
        except StorageError:
            raise
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self} does not exist") from exc
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot {verb} {self}: {_aws_error(exc)}") from None

    def _info(self):
        return self._call("reach", lambda: self.fs.get_file_info(self.path))

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def missing_reason(self) -> str:
        """Why this object is not there: its bucket does not exist, or the key is not in it."""
        bucket = RemotePath(self.scheme, self.bucket)
        if self.path != self.bucket and not bucket.exists():
            return f"bucket {self.bucket!r} does not exist"
        return "no such object"

    def _entries(self, recursive: bool, files_only: bool = True) -> list[RemotePath]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        infos = self._call("list", lambda: self.fs.get_file_info(selector))
        return [
            RemotePath(self.scheme, info.path)
            for info in infos
            if info.type == pafs.FileType.File or (not files_only and info.type == pafs.FileType.Directory)
        ]

    def _files(self, recursive: bool) -> list[RemotePath]:
        return self._entries(recursive)

    def iterdir(self) -> list[RemotePath]:
        return sorted(self._entries(recursive=False, files_only=False))

    def glob(self, pattern: str) -> list[RemotePath]:
        """Files directly under this prefix whose name matches (Path.glob's one-level patterns)."""
        return sorted(p for p in self._files(recursive=False) if fnmatch.fnmatchcase(p.name, pattern))

    def rglob(self, pattern: str) -> list[RemotePath]:
        return sorted(p for p in self._files(recursive=True) if fnmatch.fnmatchcase(p.name, pattern))

    # --- reading and writing ---
    def read_bytes(self) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self.path) as handle:
                return handle.read()

        return self._call("read", read)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def open_input(self):
        """A seekable binary file (Parquet footers, tar members)."""
        return self._call("open", lambda: self.fs.open_input_file(self.path))

    def write_bytes(self, data: bytes) -> None:
        def write() -> None:
            with self.fs.open_output_stream(self.path) as handle:
                handle.write(data)

        self._call("write", write)

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.exists():
            return
        self._call("delete", lambda: self.fs.delete_file(self.path))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object storage has no folders; a prefix exists once an object is under it."""

    def remove_tree(self) -> None:
        """Every object under this prefix (S3: batched deletes, a thousand keys a request)."""

        def remove() -> None:
            try:
                self.fs.delete_dir(self.path)
            except FileNotFoundError:
                pass

        self._call("delete", remove)


AnyPath = Union[Path, RemotePath]


def write_atomic(path: AnyPath, data: bytes, tmp_prefix: str = ".tmp-") -> None:
    """Write the whole file or nothing: locally to a temporary name, synced, then renamed into place; on
    object storage as one upload, which the store shows only once it is complete."""
    if isinstance(path, RemotePath):
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{tmp_prefix}{path.name}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextmanager
def open_atomic(path: AnyPath, tmp_prefix: str = ".tmp-") -> Iterator[BinaryIO]:
    """A file written in pieces that appears whole or not at all. Locally: a temporary name, synced and
    renamed on success, removed on an error. On object storage: one (multipart) upload, which S3 shows
    only once it is completed; a kill leaves an incomplete upload that nobody sees (a bucket lifecycle rule
    AbortIncompleteMultipartUpload reclaims its space). pyarrow cannot abort an upload: closing its stream
    after an error completes it, so then the object is deleted at once (callers check their inputs first)."""
    if isinstance(path, RemotePath):
        stream = path._call("write", lambda: path.fs.open_output_stream(path.path))
        try:
            yield stream
        except BaseException:
            try:
                stream.close()
            finally:
                path.unlink(missing_ok=True)
            raise
        path._call("write", stream.close)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{tmp_prefix}{path.name}")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_tree(path: AnyPath) -> None:
    """A folder or prefix and everything under it; nothing when it is not there."""
    if isinstance(path, RemotePath):
        path.remove_tree()
    else:
        shutil.rmtree(path, ignore_errors=True)


def open_binary(path: AnyPath):
    """A seekable binary file for reading, local or remote."""
    return path.open_input() if isinstance(path, RemotePath) else open(path, "rb")


def duckdb_filesystem(scheme: str):
    """An fsspec view of the scheme's pyarrow filesystem, to register with DuckDB (whose own httpfs
    extension would have to be downloaded)."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    wrapper = type(f"{scheme.capitalize()}ArrowFS", (ArrowFSWrapper,), {"protocol": scheme})
    return wrapper(filesystem(scheme))
