"""Checks on a composed config, made before any model is loaded, each failing with a one-line ConfigError: the whole
project's (stages, layers, sizes, data, judges, classifiers, methods), so this module sits above the methods."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from scans import methods
from scans.analysis.anchoring import segments
from scans.capability.mmlu import check_subjects
from scans.config import ANCHOR_LAYERS, SEGMENTS, STAGES, SWEEP_VARIES, number, parse_layers, positive_int
from scans.data import BENIGN, HARMFUL, catalogue, configure_from, eval_sets, load_prompts
from scans.data.attacks import configured_attacks
from scans.data.catalogue import builtin
from scans.errors import ConfigError
from scans.judge import get_judge
from scans.models.loading import device_map_of
from scans.organism import PRECISIONS
from scans.steering.harm import KINDS
from scans.steering.hook import POSITION_POLICIES


def validate(cfg: DictConfig) -> None:
    """Reject bad values early: unknown stage, non-numeric α or 𝒯, layers outside the model, bad sizes."""
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage!r}; expected one of {', '.join(STAGES)}")
    n = cfg.model.get("num_layers")
    if n is not None:
        positive_int(n, "model.num_layers")
    number(cfg.steer.alpha, "steer.alpha")
    number(cfg.classify.threshold, "classify.threshold", -1.0, 1.0)
    if cfg.steer.layers != ANCHOR_LAYERS and cfg.steer.layers not in SEGMENTS:
        parse_layers(cfg.steer.layers, n, "steer.layers")
    if cfg.analysis.segments is not None and n is not None:
        segments(n, list(cfg.analysis.segments))
    if cfg.sweep.vary not in SWEEP_VARIES:
        raise ConfigError(f"sweep.vary={cfg.sweep.vary!r}; expected one of {', '.join(SWEEP_VARIES)}")
    for a in cfg.sweep.alphas:
        number(a, "sweep.alphas[]")
    for t in cfg.analysis.paper_thresholds:
        number(t, "analysis.paper_thresholds[]", -1.0, 1.0)
    parse_layers(cfg.classify.layers, n, "classify.layers")
    if cfg.steer.positions not in POSITION_POLICIES:
        raise ConfigError(f"steer.positions={cfg.steer.positions!r}; expected one of {', '.join(POSITION_POLICIES)}")
    device_map_of(cfg.model)  # a bad model.device_map is rejected before any model is loaded
    positive_int(cfg.data.anchors.size, "data.anchors.size")
    positive_int(cfg.data.limit, "data.limit", allow_none=True)
    positive_int(cfg.tune.get("validation_limit"), "tune.validation_limit", allow_none=True)
    validate_data(cfg)
    positive_int(cfg.generation.max_new_tokens, "generation.max_new_tokens")
    positive_int(cfg.generation.batch_size, "generation.batch_size")
    positive_int(cfg.classify.batch_size, "classify.batch_size")
    number(cfg.generation.repetition_penalty, "generation.repetition_penalty", 0.0)
    if cfg.tune.get("max_harmful_drop") is not None:
        number(cfg.tune.max_harmful_drop, "tune.max_harmful_drop", 0.0, 1.0)
    c = cfg.capability
    for key in ("mmlu.max_length", "mmlu.batch_size", "xsum.max_new_tokens", "perplexity.window",
                "perplexity.batch_size", "cost.prompts", "cost.prompt_tokens", "cost.max_new_tokens"):  # fmt: skip
        positive_int(OmegaConf.select(c, key), f"capability.{key}")
    for key in ("mmlu.per_subject", "xsum.documents", "perplexity.windows"):
        positive_int(OmegaConf.select(c, key), f"capability.{key}", allow_none=True)
    if not 0 <= c.mmlu.shots <= 5:
        raise ConfigError(f"capability.mmlu.shots={c.mmlu.shots!r}; MMLU has 5 dev questions per subject (0-5)")
    if c.mmlu.get("subjects"):
        check_subjects(list(c.mmlu.subjects))
    for b in c.cost.batch_sizes:
        positive_int(b, "capability.cost.batch_sizes[]")
    for key in ("judge.name", "judge.fit"):
        try:
            judge = get_judge(OmegaConf.select(cfg, key))
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        settings = getattr(judge, "settings", None)  # a judge learned from answers to a reported set (XSTest)
        if settings is not None and key == "judge.fit":
            raise ConfigError(
                f"judge.fit={cfg.judge.fit}: a judge trained on answers to a reported set (XSTest) may count reported "
                "refusals (judge=...) but not make the pipeline's choices; use scans_rules or xstest_strmatch"
            )
        if settings is not None and cfg.overlap.near_duplicate < settings.near_duplicate:
            raise ConfigError(
                f"judge={cfg.judge.name} keeps prompts with content-word Jaccard >= {settings.near_duplicate} out of "
                f"the model that judges them, but overlap.near_duplicate={cfg.overlap.near_duplicate} counts lower "
                "overlaps as duplicates; raise it or use another judge"
            )
    autocast = OmegaConf.select(cfg, "align.train.autocast", default=None)
    if autocast != "auto" and autocast not in PRECISIONS:
        raise ConfigError(f"align.train.autocast={autocast!r}; expected bfloat16, float16, null (fp32) or auto")
    trained = OmegaConf.select(cfg, "align.train.layers", default=None)
    if trained is not None and cfg.model.source.kind == "organism":
        parse_layers(trained, cfg.model.base.get("num_layers"), "align.train.layers")
    for value in OmegaConf.select(cfg, "align.precisions", default=None) or []:
        if value not in PRECISIONS:
            raise ConfigError(f"align.precisions: {value!r}; expected bfloat16, float16 or null (fp32)")
    mined = OmegaConf.select(cfg, "align.mined", default=None)
    if mined is not None:
        unknown = sorted(set(mined.get("harmful", {})) - set(cfg.align.harmful))
        if unknown or not mined.get("probe_tokens"):
            raise ConfigError(
                f"align.mined: harmful sources {unknown} are not in align.harmful, or no probe_tokens; expected "
                "{probe_tokens: n, alpaca: n, harmful: {<a source of align.harmful>: n}}"
            )
    validate_classifiers(cfg)
    validate_methods(cfg)
    validate_jailbreak(cfg)


def validate_jailbreak(cfg: DictConfig) -> None:
    """The attacks are known and well formed, the sets are harmful evaluation sets of the run, the judges exist."""
    j = cfg.get("jailbreak")
    if j is None:
        return
    configured_attacks(j)
    known = eval_sets()
    for name in j.sets:
        if name not in cfg.data.eval_sets:
            raise ConfigError(f"jailbreak.sets: {name!r} is not in data.eval_sets")
        if name in known and known[name].label != HARMFUL:
            raise ConfigError(f"jailbreak.sets: {name!r} is a {known[name].label} set; attacks wrap harmful prompts")
    for name in j.judges:
        try:
            get_judge(name)
        except ConfigError as exc:
            raise ConfigError(f"jailbreak.judges: {exc}") from None
    if isinstance(j.samples, bool) or not isinstance(j.samples, int) or j.samples < 0:
        raise ConfigError(f"jailbreak.samples={j.samples!r} must be a whole number (0: none kept)")
    number(j.disagreement, "jailbreak.disagreement", 0.0, 100.0)


def validate_data(cfg: DictConfig) -> None:
    """The run's own dataset entries (`data.sets`, `data.sets_dirs`) are read and checked, and every set the config
    names (evaluation, validation, anchors, the disjointness rule's) must exist in the catalogue."""
    configure_from(cfg)
    if not cfg.data.eval_sets:
        raise ConfigError("data.eval_sets is empty")
    known = eval_sets()
    for key in ("data.eval_sets", "tune.validation_sets", "sweep.sets", "steer.full.sets", "align.validation.sets"):
        listed = list(OmegaConf.select(cfg, key, default=[]))
        unknown = [n for n in listed if n not in known]
        if unknown:
            raise ConfigError(
                f"{key}: unknown evaluation set(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)} "
                "(a new one is a YAML file in configs/data/sets/, see its README.md)"
            )
        twice = sorted({n for n in listed if listed.count(n) > 1})
        if twice:
            raise ConfigError(f"{key} lists {', '.join(map(repr, twice))} more than once")
    if cfg.stage in (
        "all",
        "analyze",
        "sweep",
        "sweeps",
        "report",
    ):  # Tables 5-7 and Figures 4-5 read these sets' results
        needed = dict.fromkeys([*cfg.sweep.sets, "xstest_safe", "xstest_unsafe"])
        missing = [n for n in needed if n not in cfg.data.eval_sets]
        if missing:
            raise ConfigError(
                f"stage={cfg.stage} needs {', '.join(missing)} in data.eval_sets (Tables 5-7 show sweep.sets; "
                "Figures 4-5 and Table 7's F1 are on XSTest)"
            )
    # A run's own evaluation files are read now, so that a bad file stops the run before any model is loaded.
    for name in cfg.data.eval_sets:
        if known[name].dataset not in builtin():
            load_prompts(known[name].dataset)
    anchored = {cfg.data.anchors.harmful, cfg.data.anchors.benign}
    drawn = [n for n in cfg.tune.validation_sets if known[n].dataset in anchored]
    if drawn:
        raise ConfigError(f"tune.validation_sets: {', '.join(drawn)} come from the anchors' datasets; choose others")
    names = catalogue()
    for key, label in (("data.anchors.harmful", HARMFUL), ("data.anchors.benign", BENIGN)):
        name = OmegaConf.select(cfg, key)
        if name not in names:
            raise ConfigError(f"{key}={name!r} is not a dataset of the catalogue")
        spec = names[name]
        labels = {spec.label} if spec.label else {v for _, v in spec.label_values}
        if label not in labels:
            raise ConfigError(f"{key}={name!r} has no {label} prompts (its label rule gives {sorted(labels)})")
    unknown = [n for n in cfg.overlap.sets if n not in names]
    if unknown:
        raise ConfigError(f"overlap.sets: unknown dataset(s) {', '.join(map(repr, unknown))}")


def validate_classifiers(cfg: DictConfig) -> None:
    """Known kinds, defined anchor sets, and a `classify.use` that names one of `classify.compare`."""
    c = cfg.classify
    sets = set(c.anchor_sets)
    for name, spec in c.anchor_sets.items():
        parts = list(spec) if OmegaConf.is_list(spec) else []
        if any(p not in sets or OmegaConf.is_list(c.anchor_sets[p]) for p in parts):
            raise ConfigError(f"classify.anchor_sets.{name}={parts}: a pooled set lists other, unpooled anchor sets")
        if not parts and not {"harmful", "benign"} <= set(spec):
            raise ConfigError(f"classify.anchor_sets.{name} needs `harmful` and `benign` (registry names) or a list")
    for kind, anchors in c.compare.items():
        if kind not in KINDS:
            raise ConfigError(f"classify.compare.{kind}: unknown classifier; known: {', '.join(KINDS)}")
        unknown = [a for a in anchors if a not in sets]
        if unknown:
            raise ConfigError(f"classify.compare.{kind}: unknown anchor set(s) {unknown}; known: {', '.join(sets)}")
    kind, _, anchors = str(c.use).partition("/")
    if c.use != "best" and (kind not in c.compare or (anchors and anchors not in c.compare[kind])):
        raise ConfigError(f"classify.use={c.use!r}; expected best, a kind of classify.compare or kind/anchors")
    positive_int(c.anchor_size, "classify.anchor_size", allow_none=True)
    positive_int(c.gradsafe.references, "classify.gradsafe.references")
    number(c.probe.C, "classify.probe.C", 0.0)


def validate_methods(cfg: DictConfig) -> None:
    """Every listed method (and `method=`, if given) must name a YAML of configs/method/ and build from it."""
    if not cfg.get("methods"):
        raise ConfigError("methods is empty; list rows of configs/method/ (e.g. methods=[default,scans_paper])")
    n = cfg.model.get("num_layers")
    for name in cfg.methods:
        node = methods.node(cfg, name)
        methods.build(node, name)
        # The ablation's layers, before any model work, where a stage trains or runs the rows.
        if node.get("candidate_layers") and n is not None and cfg.stage in ("all", "prepare", "steer"):
            where = f"{name}.candidate_layers (or model.grids.ablation_layers)"
            parse_layers(list(node["candidate_layers"]), n, where)
    unknown = [n for n in cfg.steer.full.methods if n not in methods.known()]
    if unknown:
        raise ConfigError(f"steer.full.methods: {', '.join(unknown)} is not a YAML of configs/method/")
    if cfg.get("method") is not None:
        methods.build(cfg.method)
