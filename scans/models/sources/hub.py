"""`source.kind: hub`: a model on the Hugging Face hub, pinned to the commit its revision names."""

from __future__ import annotations

import re
from pathlib import Path

from scans.errors import ConfigError
from scans.models.sources.base import Location, depth, plain, register

COMMIT = re.compile(r"[0-9a-f]{40}")


def resolve_revision(repo_id: str, revision: str | None) -> str:
    """The commit a hub revision names, so that a cache key holds the weights' commit, never a moving branch.

    A 40-hex commit is kept as it is; a branch or tag is looked up in the local hub cache (its `refs/` file, written
    when the model was downloaded), then on the hub. Neither answering is an error that asks for a pinned commit.
    """
    revision = revision or "main"
    if COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    if ref.is_file() and COMMIT.fullmatch(sha := ref.read_text().strip()):
        return sha
    try:
        from huggingface_hub import HfApi

        sha = HfApi().model_info(repo_id, revision=revision).sha
    except Exception as exc:  # offline, gated, unknown repo: the message says what to pin
        raise ConfigError(
            f"model.source.revision={revision!r} of {repo_id} cannot be resolved to a commit ({type(exc).__name__}); "
            "set model.source.revision to the 40-hex commit of the weights"
        ) from None
    if not sha or not COMMIT.fullmatch(sha):
        raise ConfigError(f"the hub gave no commit for {repo_id}@{revision}; set model.source.revision to one")
    return sha


class Hub:
    """`id` and `revision` (a commit, or a branch or tag resolved to one)."""

    def identity(self, cfg) -> dict:
        return {**plain(cfg.source), "revision": resolve_revision(cfg.source.id, cfg.source.get("revision"))}

    def materialize(self, cfg, cache_dir: str | Path | None = None) -> Location:
        revision = resolve_revision(cfg.source.id, cfg.source.get("revision"))
        return Location(cfg.source.id, {"revision": revision}, provenance={"revision": revision})

    def num_layers(self, cfg, cache_dir: str | Path | None = None) -> int:
        """From the commit's `config.json` alone (downloaded, or found in the hub cache)."""
        from transformers import AutoConfig

        revision = resolve_revision(cfg.source.id, cfg.source.get("revision"))
        config = AutoConfig.from_pretrained(cfg.source.id, revision=revision)
        return depth(config.to_dict(), f"{cfg.source.id}@{revision}")


register("hub", Hub())
