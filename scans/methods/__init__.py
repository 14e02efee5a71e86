"""Methods: the rows of Tables 2-4, one module and one YAML of `configs/method/` each (see `base` for the protocol).

`rows(run)` is the list every stage iterates: `method=<name>` on the command line picks one method (with its fields
overridable, `method.ratio=3`), otherwise `methods` lists the rows of Table 2 in the paper's order. With
`steer.tuned=false` the tuned SCANS row is left out and the paper recipe is the headline row of Tables 3-7.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from scans.errors import ConfigError
from scans.methods.base import Intervention, Method, Row, method_key, teacher_forced_logits
from scans.methods.default import Default

METHOD_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "method"
HEADLINE = {True: "scans_tuned", False: "scans_paper"}  # by steer.tuned
TUNED = ("scans_tuned", "scans_two", "scans_classifier")  # the rows whose settings the `tune` stage chooses


def known() -> list[str]:
    return sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))


def node(cfg: DictConfig, name: str) -> dict:
    """The resolved config of `configs/method/<name>.yaml` (its interpolations read the run's config), with the
    run's `method_overrides.<name>` fields over it (`experiment=smoke` shrinks what the baselines train)."""
    path = METHOD_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(known())} (configs/method/<name>.yaml)")
    root = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    spec = OmegaConf.load(path)
    override = (cfg.get("method_overrides") or {}).get(name)
    if override:
        unknown = sorted(set(override) - set(spec))
        if unknown:
            raise ConfigError(f"method_overrides.{name}.{unknown[0]}: {name} has no such field")
        spec = OmegaConf.merge(spec, override)
    root["_method_"] = spec
    return OmegaConf.to_container(root["_method_"], resolve=True)


def build(spec: dict | DictConfig, label: str = "method") -> Method:
    """A Method from its config (`_target_` and fields); bad config is one line naming the method."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise ConfigError(f"{label}: a method config needs `_target_` (the Method class) and `name`")
    try:
        method = instantiate(spec, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"{label}: cannot build {spec['_target_']}: {cause}") from None
    if not isinstance(method, Method):
        raise ConfigError(f"{label}: {spec['_target_']} is not a scans.methods.Method")
    _check_types(method, label)
    return method


_SCALARS = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}


def _check_types(method: Method, label: str) -> None:
    """Fields annotated float, int, bool or str (or `| None`) must hold such a value: `method.ratio=x` is an error."""
    for f in dataclasses.fields(method):
        hint = str(f.type).replace(" ", "")
        optional = hint.endswith("|None")
        kinds = _SCALARS.get(hint.removesuffix("|None"))
        value = getattr(method, f.name)
        if kinds is None or (value is None and optional):
            continue
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ConfigError(f"{label}: {f.name}={value!r} is not a {hint.removesuffix('|None')}")


def load(run, name: str) -> Method:
    """The resolved method of `configs/method/<name>.yaml` for this run."""
    cache = run.methods_cache
    if name not in cache:
        cache[name] = build(node(run.cfg, name), name).resolve(run)
    return cache[name]


def names(run) -> list[str]:
    listed = list(run.cfg.methods)
    if not run.cfg.steer.tuned:
        listed = [n for n in listed if n not in TUNED]
    return listed


def rows(run) -> list[Method]:
    """The methods this run produces: `method=<name>` alone, or the rows of `methods`."""
    chosen = run.cfg.get("method")
    if chosen is not None:
        if "_chosen_" not in run.methods_cache:
            run.methods_cache["_chosen_"] = build(chosen).resolve(run)
        return [run.methods_cache["_chosen_"]]
    return [load(run, n) for n in names(run)]


def with_default(rows_: list[Method]) -> list[Method]:
    """Default first (the rows a table compares with it), then the others in order."""
    return [Default(), *(m for m in rows_ if not isinstance(m, Default))]


def headline(run) -> Method:
    """The SCANS row that Tables 3-7 compare with Default: the tuned one unless steer.tuned=false."""
    return load(run, HEADLINE[bool(run.cfg.steer.tuned)])


def intervention(run, method: Method) -> Intervention:
    """The method's intervention, built once per run (an expert model or a soft prompt is loaded once)."""
    cache = run.interventions_cache
    if method not in cache:
        method.prepare(run)
        cache[method] = method.intervention(run)
    return cache[method]


__all__ = [
    "Default",
    "Intervention",
    "Method",
    "Row",
    "build",
    "headline",
    "intervention",
    "known",
    "load",
    "method_key",
    "names",
    "rows",
    "teacher_forced_logits",
    "with_default",
]
