#!/usr/bin/env bash
# The same 4-job α sweep (Table 6's column stage) run one job after another (Hydra's basic launcher, one process)
# and as 2 parallel jobs at a time (hydra/launcher=joblib), each from a copy of the same warm artifact store (the
# vectors and similarities built once beforehand), and the ratio of the two wall times. Run from the repository root
# with SCANS_DATA_DIR set; extra arguments are Hydra overrides for all three runs.
set -euo pipefail
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
COMMON=(model=smollm2_135m_instruct experiment=smoke steer.tuned=false sweep.vary=alpha generation.max_new_tokens=16
        "hydra.sweep.dir=$WORK/multirun" "hydra.run.dir=$WORK/run" "$@")
# Warm: the vectors and the similarities every job reads (and the dequantized model), built once.
for stage in extract classify; do
  "$PY" -m scans "${COMMON[@]}" paths.artifacts="$WORK/warm" stage=$stage >/dev/null 2>&1
done
cp -r "$WORK/warm" "$WORK/serial"; cp -r "$WORK/warm" "$WORK/parallel"
start=$(date +%s.%N)
"$PY" -m scans -m "${COMMON[@]}" stage=sweep paths.artifacts="$WORK/serial" steer.alpha=2,3,4,5 >/dev/null 2>&1
serial=$("$PY" -c "print(round($(date +%s.%N) - $start, 1))")
start=$(date +%s.%N)
"$PY" -m scans -m "${COMMON[@]}" stage=sweep paths.artifacts="$WORK/parallel" steer.alpha=2,3,4,5 \
  hydra/launcher=joblib hydra.launcher.n_jobs=2 >/dev/null 2>&1
parallel=$("$PY" -c "print(round($(date +%s.%N) - $start, 1))")
echo "4-job alpha sweep on $(nproc) cores: serial ${serial} s, joblib (2 jobs at a time) ${parallel} s," \
  "speed-up $("$PY" -c "print(round($serial / $parallel, 2))")x"
