#!/bin/bash
# interleaved A/B: specnb bench on the embedded pair, same settings, each run under the timing lock
# PYTHON: the python of a venv with specnb's dependencies; CLONES: the folder holding one clone per
# commit, house2-bench-<letter> (absolute paths of the machine replaced by these variables after the run)
OUT=${OUT:-.}  # where the runs write (a folder under /tmp when they ran)
ARGS="'bench','--gammas','4','--limit','4','--max-new-tokens','32','--reps','2'"
for i in 1 2 3 4; do
  for c in A B; do
    now=$(date -u +%H%M)
    if [[ "$now" > "0139" && "$now" < "1200" ]]; then echo "stop: $(date -u)" >> $OUT/log; exit 0; fi
    echo "run $i $c start $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/log
    cd "$CLONES/house2-bench-$c"
    flock /tmp/specnb-quiet.lock "$PYTHON" -c "import sys, specnb; print('specnb from', specnb.__file__); from specnb.cli import main; sys.exit(main([$ARGS,'--json','$OUT/run$i-$c.json']))" > $OUT/run$i-$c.txt 2>&1
    echo "run $i $c end $(date -u +%FT%TZ) rc $? load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/log
  done
done
echo done >> $OUT/log
