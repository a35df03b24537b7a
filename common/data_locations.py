"""The one data-location rule: where every loader finds a data file.

    path = locate_data_file("data_files/persona/ends-justify-means.jsonl")
    rows = load_hub_dataset("Anthropic/hh-rlhf/harmless-base", split="test")   # a Hub dataset, not a file

For a name `data_files/REL` (or a bare `REL`), the first of these that exists wins:
    1. the path as given (absolute, or relative to the working directory);
    2. `<project root>/data_files/REL` (the conventional place; see data_files/README.md);
    3. `$LD_DATA_DIR/REL`, when the environment variable LD_DATA_DIR is set (e.g. a shared data folder);
    4. the original public source of REL (`HUB_SOURCES`), downloaded once with `huggingface_hub` into its cache.
If none works, `DataNotFoundError` lists every place tried and the exact command or URL to get the file.

Hub dataset ids that are not files go to `datasets.load_dataset` through `load_hub_dataset`; a data directory
or a configuration of the repository is written into the id (`parse_hub_dataset`):
    org/name            load_dataset("org/name")
    org/name/sub/dir    load_dataset("org/name", data_dir="sub/dir")   e.g. Anthropic/hh-rlhf/harmless-base
    org/name:config     load_dataset("org/name", "config")   e.g. tatsu-lab/alpaca_farm:alpaca_human_preference
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
}

# Conventional names that are not a single public file: how to get them instead (see data_files/README.md).
DERIVED_SOURCES: dict[str, str] = {
    "sorrybench/sorry_bench_202406.csv": (
        "it is the 450 base prompts (columns `category`, `prompt`) of the gated Hub dataset "
        "sorry-bench/sorry-bench-202406 (https://huggingface.co/datasets/sorry-bench/sorry-bench-202406); without "
        "the file the SORRY-Bench loaders read that Hub dataset itself after you accept its terms and run "
        "`huggingface-cli login`"),
    "ultrafeedback/train_1000.jsonl": (
        "it is a seeded 1000-pair sample of HuggingFaceH4/ultrafeedback_binarized; or use the Hub id itself "
        "(dataset `HuggingFaceH4/ultrafeedback_binarized`, split `train_prefs`)"),
    "ultrafeedback/eval_200.jsonl": (
        "it is a seeded 200-pair sample of HuggingFaceH4/ultrafeedback_binarized; or use the Hub id itself "
        "(dataset `HuggingFaceH4/ultrafeedback_binarized`, split `test_prefs`)"),
}

_NOT_HUB_PREFIXES = (".", "~", "/", DATA_FILES_PREFIX, "outputs/")


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


def hub_file_from_name(name: str) -> HubFile | None:
    """A name written `<org>/<repo>/<path in repo>` with a file suffix, as a HubFile; else None.

    Example: 'Anthropic/model-written-evals/persona/ends-justify-means.jsonl'. Names starting with '.', '~', '/',
    'data_files/' or 'outputs/' are local paths, never Hub files.
    """
    parts = Path(name).as_posix().split("/")
    if name.startswith(_NOT_HUB_PREFIXES) or len(parts) < 3 or not all(parts) or not Path(name).suffix:
        return None
    return HubFile("/".join(parts[:2]), "/".join(parts[2:]))


def how_to_get(path: str | Path) -> str:
    """One sentence saying how to obtain the file a conventional name (or a Hub file name) stands for."""
    relative = relative_data_name(path)
    target = DATA_FILES_DIR / relative
    source = HUB_SOURCES.get(relative)
    if source is None and relative in DERIVED_SOURCES:
        return (f"place the file at {target} or set {DATA_DIR_ENV} to a folder holding {relative}; "
                f"{DERIVED_SOURCES[relative]} (see data_files/README.md)")
    placing = f"move it to {target}"
    if source is None:
        source = hub_file_from_name(str(path))
        if source is None:
            return (f"check the path, or place the file at {target} or set {DATA_DIR_ENV} to a folder holding "
                    f"{relative} (see data_files/README.md)")
        placing = f"pass data_files/_hub/{source.filename} instead"
    login = " (gated: accept its terms on the Hub and run `huggingface-cli login` first)" if source.gated else ""
    return (f"download it{login} with `huggingface-cli download {source.repo_id} {source.filename} --repo-type dataset "
            f"--local-dir data_files/_hub` and {placing}, or get it from {source.url}")


def locate_data_file(path: str | Path, *, download: bool = True, hub_file_syntax: bool = False) -> Path:
    """Resolve `path` by the data-location rule (module docstring). Raises DataNotFoundError naming what was tried.

    Args:
        path: A file path or a conventional name (`data_files/REL` or `REL`).
        download: Allow step 4 (the Hub). False for checks that must not touch the network (plan validation).
        hub_file_syntax: Also accept `<org>/<repo>/<path in repo>` names of Hub files (`hub_file_from_name`) as
            step 4 when no local place holds `path`.
    """
    local = find_local_data_file(path)
    if local is not None:
        return local
    tried = [str(candidate) for candidate in candidate_paths(path)]
    if not os.environ.get(DATA_DIR_ENV) and not Path(path).is_absolute():
        tried.append(f"${DATA_DIR_ENV} (not set)")
    source = HUB_SOURCES.get(relative_data_name(path))
    if source is None and hub_file_syntax:
        source = hub_file_from_name(str(path))
    if source is not None and download:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(source.repo_id, source.filename, repo_type="dataset"))
        except Exception as err:  # offline, gated, or missing: fall through to the one error below
            tried.append(f"Hub dataset {source.repo_id} file {source.filename} ({type(err).__name__})")
    raise DataNotFoundError(f"data file {str(path)!r} not found (tried: {'; '.join(tried)}); "
                            f"to fix: {how_to_get(path)}")


@dataclass(frozen=True)
class HubDataset:
    """A dataset read with `datasets.load_dataset(repo_id, config_name, data_dir=data_dir, split=...)`.

    Attributes:
        repo_id: "org/name", e.g. "Anthropic/hh-rlhf".
        data_dir: Folder inside the repository ("harmless-base"), or None for the whole repository.
        config_name: Configuration ("alpaca_human_preference"), or None for the default one.
    """

    repo_id: str
    data_dir: str | None = None
    config_name: str | None = None

    @property
    def url(self) -> str:
        return f"https://huggingface.co/datasets/{self.repo_id}"

    def describe(self) -> str:
        extras = [f"data_dir {self.data_dir!r}"] * bool(self.data_dir) + [f"config {self.config_name!r}"] * bool(
            self.config_name)
        return f"Hub dataset {self.repo_id}" + (f" ({', '.join(extras)})" if extras else "")


def parse_hub_dataset(name: str) -> HubDataset | None:
    """`org/name[/data/dir][:config]` as a HubDataset (module docstring), or None when `name` is not of that form.

    Not Hub ids: names with a file suffix in their last part, names starting with '.', '~', '/', 'data_files/'
    or 'outputs/', and names with an empty part.
    """
    text, _, config = name.partition(":")
    parts = text.split("/")
    if name.startswith(_NOT_HUB_PREFIXES) or len(parts) < 2 or not all(parts) or Path(text).suffix:
        return None
    if ":" in name and not config:
        return None
    return HubDataset("/".join(parts[:2]), "/".join(parts[2:]) or None, config or None)


def is_hub_dataset_id(name: str) -> bool:
    """Whether `name` is a Hub dataset id (`parse_hub_dataset`) and no local file at any place of the rule."""
    return parse_hub_dataset(name) is not None and find_local_data_file(name) is None


def load_hub_dataset(name: str, split: str, default_config_name: str | None = None):
    """`datasets.load_dataset` for a Hub id written as in `parse_hub_dataset`; returns the `datasets.Dataset` split.

    `default_config_name` is used when `name` names no configuration (e.g. a loader's usual one for a repository).

    Raises:
        ValueError: `name` is not a Hub dataset id.
        DataNotFoundError: the dataset cannot be reached (offline, gated without login, or no such repository);
            the message names the Hub dataset, the error, and the command and URL to get it.
    """
    spec = parse_hub_dataset(name)
    if spec is None:
        raise ValueError(f"{name!r} is not a Hub dataset id (expected org/name, org/name/data_dir or org/name:config)")
    import datasets  # imported lazily: slow, and only needed for Hub ids

    config_name = spec.config_name or default_config_name
    try:
        return datasets.load_dataset(spec.repo_id, config_name, data_dir=spec.data_dir, split=split)
    except OSError as err:  # ConnectionError (offline), FileNotFoundError (no such repo / data_dir), gated
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataNotFoundError(
            f"{spec.describe()}, split {split!r}, could not be loaded ({type(err).__name__}: {reason}); to fix: "
            f"connect to the Hub (unset HF_HUB_OFFLINE), accept the dataset's terms at {spec.url} if it is gated and "
            f"run `huggingface-cli login`, or download it once with `huggingface-cli download {spec.repo_id} "
            f"--repo-type dataset`; or pass a local file instead (see data_files/README.md)") from err
