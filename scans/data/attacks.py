"""Jailbreak attacks: every entry of `configs/attack/*.yaml`, plus a run's own.

An attack wraps a harmful prompt in a template (`{prompt}` marks where the prompt goes) and may also start the
assistant's answer for it (`prefill`: an attack on the chat template rather than on the text). A run adds attacks of
its own as it adds datasets (`scans.data.catalogue`): `jailbreak.attack_dirs` (folders of `<name>.yaml`) or
`jailbreak.custom.<name>` (an entry in the config or on the command line). A name is defined once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scans.artifacts import stable_hash
from scans.data.catalogue import read_entries
from scans.data.registry import Prompt
from scans.errors import ConfigError

ATTACK_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "attack"
SLOT = "{prompt}"
FIELDS = {"template", "prefill", "description"}


@dataclass(frozen=True)
class Attack:
    """One attack: `template` holds `{prompt}` once; `prefill`, when given, starts the assistant's answer."""

    name: str
    template: str = SLOT
    prefill: str | None = None
    description: str = ""
    origin: str = ""

    def __post_init__(self):
        if self.template.count(SLOT) != 1:
            raise ConfigError(f"attack {self.name!r} ({self.origin}): its template must hold {SLOT} exactly once")
        if self.prefill is not None and not self.prefill.strip():
            raise ConfigError(f"attack {self.name!r} ({self.origin}): prefill is empty; leave it out instead")

    def wrap(self, text: str) -> str:
        """The attacked text of one prompt (a plain replace: a template may hold other braces, e.g. JSON)."""
        return self.template.replace(SLOT, text)

    def apply(self, prompts: Sequence[Prompt]) -> list[Prompt]:
        """The prompts wrapped, with their labels and sources; `meta` keeps the plain text and the attack."""
        return [Prompt(self.wrap(p.text), p.label, p.source, {**p.meta, "plain": p.text, "attack": self.name})
                for p in prompts]  # fmt: skip

    def answer(self, response: str) -> str:
        """The assistant's whole answer as a reader sees it: the prefill, then what the model generated."""
        if self.prefill is None:
            return response
        sep = "" if response[:1] in ",.:;!?" else " "
        return (self.prefill + sep + response).strip()

    @property
    def identity(self) -> str:
        """A short hash of what the attack does (template and prefill), for the names its artifacts are keyed by."""
        return stable_hash({"template": self.template, "prefill": self.prefill})[:8]


def attack_from_mapping(name: str, entry: Any, origin: str) -> Attack:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"attack {name!r} ({origin}) must be a mapping with a template, got {type(entry).__name__}")
    unknown = sorted(set(entry) - FIELDS)
    if unknown:
        raise ConfigError(
            f"attack {name!r} ({origin}): unknown field {unknown[0]!r}; known: {', '.join(sorted(FIELDS))}"
        )
    if "template" not in entry and "prefill" not in entry:
        raise ConfigError(f"attack {name!r} ({origin}) needs a template, a prefill or both")
    return Attack(
        name, str(entry.get("template", SLOT)), entry.get("prefill"), str(entry.get("description", "")), origin
    )


def attacks(custom: Mapping[str, Any] | None = None, dirs: Iterable[str | Path] = ()) -> dict[str, Attack]:
    """Every attack by name: the built-in ones (configs/attack), then the run's folders and inline entries."""
    out = read_entries(ATTACK_DIR, "attack", attack_from_mapping)
    extra = [read_entries(Path(d).expanduser(), "attack", attack_from_mapping) for d in dirs]
    extra.append({n: attack_from_mapping(n, e, f"jailbreak.custom.{n}") for n, e in (custom or {}).items()})
    for specs in extra:
        for name, attack in specs.items():
            if name in out:
                raise ConfigError(f"attack {name!r} is defined twice: {out[name].origin} and {attack.origin}")
            out[name] = attack
    return out


def select_attacks(names: Sequence[str], known: Mapping[str, Attack]) -> list[Attack]:
    """The attacks `names`, in order; an unknown name is a config error listing the known ones."""
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(
            f"unknown attack {missing[0]!r}; known: {', '.join(sorted(known))} (add one as {ATTACK_DIR}/<name>.yaml, "
            f"see {ATTACK_DIR / 'README.md'})"
        )
    return [known[n] for n in names]


def configured_attacks(jailbreak) -> list[Attack]:
    """The attacks a run's `jailbreak` config names (`attacks`), with its folders (`attack_dirs`) and inline entries
    (`custom`) known beside the built-in ones."""
    from omegaconf import OmegaConf

    custom = OmegaConf.to_container(jailbreak.custom, resolve=True) if jailbreak.get("custom") else {}
    return select_attacks(list(jailbreak.attacks), attacks(custom, list(jailbreak.get("attack_dirs") or [])))
