"""The Hydra entry point: `python -m scans stage=<stage> model=<name> steer.alpha=3.5`, sweeps with `-m`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from scans.config import CONFIG_DIR
from scans.errors import ScansError
from scans.stages import Run, run_stage
from scans.validation import validate

log = logging.getLogger("scans")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_group_choices(argv: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Reject an unknown option of a config group (`model=foo`) in one line, before Hydra's multi-line report."""
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        group, _, value = arg.partition("=")
        folder = config_dir / group
        if "." in group or not folder.is_dir():
            continue
        for option in value.split(","):
            option = option.strip()
            if option and not (folder / f"{option}.yaml").is_file():
                known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
                _fail(f"unknown {group} {option!r}; known: {known}")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    try:
        validate(cfg)
        run_stage(cfg.stage, Run(cfg))
    except ScansError as exc:
        _fail(str(exc))


def main() -> None:
    check_group_choices(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
