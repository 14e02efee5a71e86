"""Stage `prepare`: what each method must fit or train before it can run (SafeDecoding's expert adapter, DRO's soft
prompt, the false-refusal direction), each a cached artifact of its own; methods with nothing to fit do nothing."""

from __future__ import annotations

import logging

from scans import methods
from scans.stages.context import Run

log = logging.getLogger(__name__)


def run(r: Run) -> None:
    for method in methods.rows(r):
        if method.prepare(r) is not None:
            log.info("prepare: %s ready", method.name)
