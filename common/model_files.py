"""Integrity checks of model directories: truncated weights, broken tokenizer files, the converted-cache manifest.

    problem = safetensors_problem(path)            # None, or why the file is not a complete safetensors file
    write_manifest(model_dir); converted_cache_problem(model_dir)   # None, or why the cache is broken

safetensors layout: 8 bytes little-endian header length N, N bytes of JSON header giving each tensor's
`data_offsets` [begin, end) into the data section that follows; a complete file has exactly 8 + N + max(end)
bytes. Checking that is cheap (the header only) and catches every truncation.

The manifest `ld_manifest.json` of a converted cache lists every file with its size and SHA-256 at conversion.
`cache_problem` compares sizes (always) and, with `full`, the hashes (about 1 s per 500 MB).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from common.io_utils import atomic_write_json

MANIFEST_FILE = "ld_manifest.json"
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_MAX_HEADER_BYTES = 100 * 2**20


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (truncated, bad header), or None when it is."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > min(size - 8, _MAX_HEADER_BYTES):
            return f"header length {header_length} does not fit in the file's {size} bytes"
        try:
            header = json.loads(handle.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"header is not valid JSON ({error})"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    expected = 8 + header_length + max(ends, default=0)
    if size != expected:
        return f"{size} bytes, but its header describes {expected} bytes (truncated or padded)"
    return None


def weights_problems(directory: Path) -> list[str]:
    """'<file>: <problem>' for every *.safetensors file of `directory` that is not complete."""
    problems = []
    for path in sorted(Path(directory).glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            problems.append(f"{path}: {problem}")
    return problems


def tokenizer_file_problems(directory: Path) -> list[str]:
    """'<file>: <problem>' for every tokenizer JSON file of `directory` that does not parse as a JSON object."""
    problems = []
    for name in TOKENIZER_JSON_FILES:
        path = Path(directory) / name
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            problems.append(f"{path}: not valid JSON ({error}); the file is truncated or corrupt")
            continue
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a JSON object, got {type(value).__name__}")
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> dict:
    """Record size and SHA-256 of every file of `directory` (except the manifest) in its manifest; returns it."""
    directory = Path(directory)
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    manifest = {"files": files}
    atomic_write_json(directory / MANIFEST_FILE, manifest)  # a reader never sees half a manifest
    return manifest


def cache_problem(directory: Path, *, full: bool) -> str | None:
    """Why the converted cache `directory` is broken (missing manifest/file, size or hash differs), or None."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{directory / MANIFEST_FILE} is missing or unreadable ({type(error).__name__})"
    for name, recorded in files.items():
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != recorded["size"]:
            return f"{path} has {path.stat().st_size} bytes, {recorded['size']} were written"
        if full and _sha256(path) != recorded["sha256"]:
            return f"{path} differs from what was written (SHA-256 mismatch)"
    return None


_HASH_VERIFIED: set[tuple] = set()  # converted caches whose hashes this process checked


def converted_cache_problem(target: Path) -> str | None:
    """Why the converted model cache `target` is broken, or None. Sizes are compared with the manifest on every
    call, SHA-256 hashes once per process. A cache from before manifests is checked structurally (complete
    safetensors, parseable tokenizer files) and, if sound, gets its manifest now."""
    target = Path(target)
    if not (target / MANIFEST_FILE).is_file():
        problems = weights_problems(target) + tokenizer_file_problems(target)
        if problems:
            return problems[0]
        write_manifest(target)
        return None
    key = (str(target), tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in target.iterdir())))
    problem = cache_problem(target, full=key not in _HASH_VERIFIED)
    if problem is None:
        _HASH_VERIFIED.add(key)
    return problem
