"""A Google Cloud Storage emulator for tests: `gcp-storage-emulator` in this process, on 127.0.0.1 and a free
port, in memory. Nothing leaves the machine.

`Emulator.env` is what a program needs to use it instead of the real service (gcsfs through
``STORAGE_EMULATOR_HOST``, TensorStore, which orbax writes arrays with, through ``TENSORSTORE_GCS_HTTP_URL``;
gcsfs's zonal/hierarchical-bucket probe is a gRPC call the emulator does not answer, so it is turned off).

What the emulator lacks, and what is done about it here:
- it ignores upload preconditions: ``ifGenerationMatch=0`` ("create only if absent", which the run lock
  relies on) is added here for uploads in one request (media and multipart, what gcsfs uses for small
  objects such as the lock) and for resumable uploads at their start, answering 412 as the service does;
- its downloads leave out the object's generation (``x-goog-generation``), which the service sends and
  TensorStore reads when orbax rewrites its manifest conditionally (without it about one checkpoint write in
  three failed with "Malformed StorageGeneration"): added here;
- no IAM: a denied write is simulated by `deny_writes`, which answers 403 to every upload;
- it prints a traceback for every client that hangs up (a killed program): those are dropped here.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http import HTTPStatus

from gcp_storage_emulator import server as _server
from gcp_storage_emulator import storage as _storage
from gcp_storage_emulator.handlers import objects as _objects

_local = threading.local()
_DENY = {"writes": False}  # deny_writes: every upload is refused


class _PreconditionFailed(Exception):
    pass


def _exists(store, bucket: str, name: str) -> bool:
    try:
        return store.get_file_obj(bucket, name) is not None
    except Exception:  # the emulator raises NotFound for a missing object
        return False


def _patch() -> None:
    """Make the emulator honour ``ifGenerationMatch=0`` and `deny_writes` (once per process)."""
    if getattr(_objects, "_l2l_patched", False):
        return
    original_insert = _objects.insert
    create_file = _storage.Storage.create_file
    create_resumable = _storage.Storage.create_resumable_upload

    def insert(request, response, store, *args, **kwargs):
        if _DENY["writes"]:
            response.status = HTTPStatus.FORBIDDEN
            return None
        _local.if_absent = request.query.get("ifGenerationMatch") == ["0"]
        try:
            return original_insert(request, response, store, *args, **kwargs)
        except _PreconditionFailed:
            response.status = HTTPStatus.PRECONDITION_FAILED
            return None
        finally:
            _local.if_absent = False

    def guarded(method):
        def wrapper(self, bucket_name, file_name, *args, **kwargs):
            if getattr(_local, "if_absent", False) and _exists(self, bucket_name, file_name):
                raise _PreconditionFailed(file_name)
            return method(self, bucket_name, file_name, *args, **kwargs)

        return wrapper

    original_download = _objects.download

    def download(request, response, store, *args, **kwargs):
        try:
            obj = store.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # not found: the original handler answers 404
            obj = None
        if obj is not None and obj.get("generation"):
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration") or 1)
        return original_download(request, response, store, *args, **kwargs)

    download._sends_generation = True

    handle_error = socketserver.BaseServer.handle_error

    def quiet(self, request, client_address):  # a client that hung up (a killed program): not news
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            handle_error(self, request, client_address)

    socketserver.BaseServer.handle_error = quiet
    _storage.Storage.create_file = guarded(create_file)
    _storage.Storage.create_resumable_upload = guarded(create_resumable)
    _objects.insert = insert
    _objects.download = download  # objects.get calls the module's name
    replaced = {original_insert: insert, original_download: download}
    for _, handlers in _server.HANDLERS:
        for method, fn in list(handlers.items()):
            if fn in replaced:
                handlers[method] = replaced[fn]
    _objects._l2l_patched = True
    _objects._l2l_generation = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """``with Emulator() as gcs:`` an in-memory GCS on 127.0.0.1 (`url`), with bucket `bucket` created."""

    def __init__(self, bucket: str = "l2l-test", port: int | None = None):
        _patch()
        self.bucket = bucket
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "GOOGLE_CLOUD_PROJECT": "l2l-test",
                "NO_GCE_CHECK": "true"}

    def gs(self, *parts: str) -> str:
        """``gs://<bucket>/<parts...>``."""
        return "/".join([f"gs://{self.bucket}", *parts])

    def start(self) -> Emulator:
        self._server = _server.create_server("127.0.0.1", self.port, in_memory=True, default_bucket=self.bucket)
        self._server.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(self.url + "/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Stop answering (as a storage outage would); `start` again to come back, empty."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    @contextlib.contextmanager
    def deny_writes(self) -> Iterator[None]:
        """Every upload is answered 403 while inside."""
        _DENY["writes"] = True
        try:
            yield
        finally:
            _DENY["writes"] = False

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def use_in_process(gcs: Emulator, monkeypatch) -> None:
    """Point this process's gcsfs and TensorStore at `gcs` (environment, fresh file-system instances)."""
    import gcsfs

    for key, value in gcs.env.items():
        monkeypatch.setenv(key, value)
    gcsfs.GCSFileSystem.clear_instance_cache()


def child_env(gcs: Emulator, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a program that should use `gcs`."""
    return {**(base if base is not None else os.environ), **gcs.env}


__all__ = ["Emulator", "child_env", "free_port", "use_in_process"]
