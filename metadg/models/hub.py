"""`model.backbone.pretrained`: a local Hugging Face folder, or a Hub id resolved through the Hugging Face cache.

A Hub id (`facebook/wav2vec2-xls-r-300m`, optionally at a `revision`) is looked up in the cache
(`HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache/huggingface/hub) and downloaded into it when
online. Offline (`HF_HUB_OFFLINE=1`, or no network) a model missing from the cache is one clear
error naming the id and the command that pre-downloads it.
"""

from __future__ import annotations

import re
from pathlib import Path

from metadg.config import ConfigError

#: `namespace/name` as the Hub spells repository ids
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
#: what a backbone needs from a repository: its config and weights (not tokenizers, not other formats' copies)
_FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"]
_LEGACY_WEIGHTS = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]


def is_hub_id(name: str) -> bool:
    """Does `name` read as a Hub repository id (and not as a path)?"""
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "~"))


def resolve_pretrained(name: str, revision: str | None = None, config_only: bool = False) -> Path:
    """The local folder of `pretrained`: the folder itself, or the cached snapshot of a Hub id (downloaded if online)."""
    path = Path(name).expanduser()
    if path.is_dir() or not is_hub_id(name):
        if revision is not None:
            raise ConfigError(f"model.backbone.revision: {revision!r} applies to a Hub id; {name} is a local folder")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.backbone.pretrained: {path} is not a Hugging Face checkpoint directory (expected config.json "
                "and model weights), nor a Hub id like facebook/wav2vec2-xls-r-300m; metadg never downloads weights "
                "for a local path"
            )
        return path
    return _snapshot(name, revision, config_only)


def _snapshot(repo_id: str, revision: str | None, config_only: bool) -> Path:
    from huggingface_hub import constants

    at = f" at revision {revision}" if revision else ""
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    offline = (f"model.backbone.pretrained: {repo_id}{at} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
               "and cannot be downloaded here (offline: HF_HUB_OFFLINE is set or there is no network). Pre-download it "
               f"on a machine with access: `{fetch}` (with the same HF_HOME / HF_HUB_CACHE), or give a local folder")
    folder = _download(repo_id, revision, ["config.json"] if config_only else _FILES, offline)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.backbone.pretrained: {repo_id}{at} has no config.json: not a transformers model")
    if config_only or _has_weights(folder):
        return folder
    # Older repositories ship PyTorch pickles only (transformers reads them with weights_only);
    # asked for separately, so a repository with both formats is not downloaded twice.
    folder = _download(repo_id, revision, ["config.json", *_LEGACY_WEIGHTS], offline)
    if not _has_weights(folder):
        raise FileNotFoundError(offline.replace("is not in the Hugging Face cache", "has no weights in the Hugging "
                                                "Face cache"))
    return folder


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def _download(repo_id: str, revision: str | None, patterns: list[str], offline: str) -> Path:
    """snapshot_download with the Hub's errors turned into ones that name the key."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise FileNotFoundError(offline) from None
    except RevisionNotFoundError:
        raise ConfigError(f"model.backbone.revision: {revision!r} is not a revision of {repo_id} on the Hub") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"model.backbone.pretrained: {repo_id} is not a model on the Hugging Face Hub (or it is "
                          "private: log in with `hf auth login`)") from None
    except HfHubHTTPError as exc:
        raise OSError(f"model.backbone.pretrained: fetching {repo_id} failed: {str(exc).splitlines()[0]}") from None
