"""Base models from a Hugging Face Hub repository (``dorado-admin models add org/name``).

``huggingface_hub.snapshot_download`` fetches only the files a model needs (configs,
safetensors shards and their index, tokenizer files, chat template) into the Hub cache, or
finds them there: with ``HF_HUB_OFFLINE=1`` nothing is fetched and a repository already in
the cache (``HF_HUB_CACHE``) is used as is. The token comes from the environment
(``HF_TOKEN``, read by huggingface_hub itself), never from a command line. The snapshot
directory is then validated and copied like any local model directory
(``core.catalog.registry``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidRequest

HF_SCHEME = "hf://"
# owner/name, as the Hub spells repository ids; an optional @revision (branch, tag, commit).
REPO_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})"
    r"(?:@(?P<revision>[A-Za-z0-9_./-]{1,255}))?$"
)
# What Hugging Face loads for a causal LM and its tokenizer; pickle weights never come down.
MODEL_FILE_PATTERNS = (
    "*.json",
    "*.safetensors",
    "tokenizer.model",
    "*.jinja",
    "*.txt",
)


@dataclass(frozen=True)
class HubSource:
    """A repository id and revision (``None``: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def parse_hub_source(source: str) -> HubSource | None:
    """``hf://owner/name[@revision]``, or a bare ``owner/name[@revision]`` that is not a local
    path; None when ``source`` is neither."""
    explicit = source.startswith(HF_SCHEME)
    text = source[len(HF_SCHEME) :] if explicit else source
    match = REPO_ID.match(text)
    if match is None:
        if explicit:
            raise InvalidRequest(
                f"Invalid Hugging Face repository '{text}': use hf://owner/name[@revision]",
                param="source",
                code="invalid_model",
            )
        return None
    if not explicit and Path(source).expanduser().exists():
        return None  # a local directory that happens to look like owner/name
    return HubSource(match.group("repo"), match.group("revision"))


def download(source: HubSource) -> Path:
    """The local snapshot directory of ``source`` (downloaded into the Hub cache if needed).

    Raises InvalidRequest naming the problem: no such repository or revision, no access (a
    gated or private repository without ``HF_TOKEN``), or offline with nothing cached.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = snapshot_download(
            source.repo_id,
            revision=source.revision,
            allow_patterns=list(MODEL_FILE_PATTERNS),
        )
    except GatedRepoError as exc:
        raise _refuse(
            f"{source} is gated: accept its terms on the Hub and set HF_TOKEN ({exc})"
        ) from exc
    except RevisionNotFoundError as exc:
        raise _refuse(f"{source}: no such revision ({exc})") from exc
    except RepositoryNotFoundError as exc:
        raise _refuse(
            f"{source}: no such repository on the Hub, or it is private and HF_TOKEN "
            "does not grant access"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise _refuse(
            f"{source} is not in the Hugging Face cache and the Hub cannot be reached "
            f"(offline: HF_HUB_OFFLINE, or no network): {exc}"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise _refuse(f"Could not download {source}: {exc}") from exc
    return Path(path)


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="source", code="invalid_model")
