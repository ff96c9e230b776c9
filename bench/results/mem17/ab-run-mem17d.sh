#!/bin/bash
set -u
for round in 1 2; do
  for side in base mem17d; do
    if [ $side = base ]; then W=/work/wt/adopt; else W=/work/wt/mem17d; fi
    echo "$(date -u +%T) start $side round $round load $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd $W && .venv/bin/python bench/agent_memory.py --pods 100 --churn 0 --skip-load \
        --name m17${side:0:1}$round --label $side-r$round --out /tmp/mem17d-mem) \
        > /tmp/mem17d-mem/$side-r$round.log 2>&1
    echo "$(date -u +%T) end $side round $round rc $? load $(cut -d' ' -f1-3 /proc/loadavg)"
  done
done
