"""The one data-location rule: where every loader finds a data file.

    path = locate_data_file("data_files/persona/ends-justify-means.jsonl")

For a name `data_files/REL` (or a bare `REL`), the first of these that exists wins:
    1. the path as given (absolute, or relative to the working directory);
    2. `<project root>/data_files/REL` (the conventional place; see data_files/README.md);
    3. `$LD_DATA_DIR/REL`, when the environment variable LD_DATA_DIR is set (e.g. a shared data folder);
    4. the original public source of REL (`HUB_SOURCES`), downloaded once with `huggingface_hub` into its cache.
If none works, `DataNotFoundError` lists every place tried and the exact command or URL to get the file.
Hub dataset ids (`org/name`) that are not files are left to `datasets.load_dataset` by the callers
(`is_hub_dataset_id`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_FILES_DIR = PROJECT_ROOT / "data_files"
DATA_DIR_ENV = "LD_DATA_DIR"
DATA_FILES_PREFIX = "data_files/"


class DataNotFoundError(FileNotFoundError):
    """A data file was not found at any place of the rule; the message says where it looked and how to get it."""


@dataclass(frozen=True)
class HubFile:
    """A file inside a Hub dataset repository (downloaded with `huggingface_hub.hf_hub_download`).

    Attributes:
        repo_id: Dataset repository, e.g. "Anthropic/model-written-evals".
        filename: Path of the file inside the repository.
        gated: Whether the repository asks users to accept its terms first (then `huggingface-cli login`).
    """

    repo_id: str
    filename: str
    gated: bool = False

    @property
    def url(self) -> str:
        return f"https://huggingface.co/datasets/{self.repo_id}/blob/main/{self.filename}"


# Conventional relative paths under data_files/ and the public file each one is a copy of.
HUB_SOURCES: dict[str, HubFile] = {
    "persona/ends-justify-means.jsonl": HubFile("Anthropic/model-written-evals", "persona/ends-justify-means.jsonl"),
    "hh_rlhf/harmless_base_test.jsonl.gz": HubFile("Anthropic/hh-rlhf", "harmless-base/test.jsonl.gz"),
    "hh_rlhf/harmless_base_train.jsonl.gz": HubFile("Anthropic/hh-rlhf", "harmless-base/train.jsonl.gz"),
    "sorrybench/sorry_bench_202406.csv": HubFile("sorry-bench/sorry-bench-202406", "sorry_bench_202406.csv",
                                                 gated=True),
}


def relative_data_name(path: str | Path) -> str:
    """'data_files/persona/x.jsonl' -> 'persona/x.jsonl'; other relative names are returned as they are."""
    text = Path(path).as_posix()
    return text[len(DATA_FILES_PREFIX):] if text.startswith(DATA_FILES_PREFIX) else text


def candidate_paths(path: str | Path) -> list[Path]:
    """The local places of the rule for `path`, in order (steps 1-3 of the module docstring)."""
    given = Path(path).expanduser()
    if given.is_absolute():
        return [given]
    relative = relative_data_name(given)
    candidates = [given, DATA_FILES_DIR / relative]
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        candidates.append(Path(data_dir).expanduser() / relative)
    return list(dict.fromkeys(candidates))


def find_local_data_file(path: str | Path) -> Path | None:
    """The first existing local place of the rule for `path`, or None (never downloads)."""
    return next((candidate for candidate in candidate_paths(path) if candidate.exists()), None)


def how_to_get(path: str | Path) -> str:
    """One sentence saying how to obtain the file a conventional name stands for."""
    relative = relative_data_name(path)
    source = HUB_SOURCES.get(relative)
    target = DATA_FILES_DIR / relative
    if source is None:
        return f"place the file at {target} or set {DATA_DIR_ENV} to a folder holding {relative}"
    login = " (gated: accept its terms on the Hub and run `huggingface-cli login` first)" if source.gated else ""
    return (f"download it{login} with `huggingface-cli download {source.repo_id} {source.filename} --repo-type dataset "
            f"--local-dir data_files/_hub` and move it to {target}, or get it from {source.url}")


def locate_data_file(path: str | Path, *, download: bool = True) -> Path:
    """Resolve `path` by the data-location rule (module docstring). Raises DataNotFoundError naming what was tried.

    Args:
        path: A file path or a conventional name (`data_files/REL` or `REL`).
        download: Allow step 4 (the Hub). False for checks that must not touch the network (plan validation).
    """
    local = find_local_data_file(path)
    if local is not None:
        return local
    tried = [str(candidate) for candidate in candidate_paths(path)]
    if not os.environ.get(DATA_DIR_ENV):
        tried.append(f"${DATA_DIR_ENV} (not set)")
    source = HUB_SOURCES.get(relative_data_name(path))
    if source is not None and download:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(source.repo_id, source.filename, repo_type="dataset"))
        except Exception as err:  # offline, gated, or missing: fall through to the one error below
            tried.append(f"Hub dataset {source.repo_id} file {source.filename} ({type(err).__name__})")
    raise DataNotFoundError(f"data file {str(path)!r} not found (tried: {'; '.join(tried)}); to fix: {how_to_get(path)}")


def is_hub_dataset_id(name: str) -> bool:
    """Whether `name` looks like a Hub dataset id ('org/name', no local file at any place of the rule)."""
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and Path(name).suffix == ""
            and find_local_data_file(name) is None)
