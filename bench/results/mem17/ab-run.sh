#!/bin/bash
# A/B interleaved: base (main 6138b22, grpcio) and grpc17 (grpclib), agent memory with 100 idle pods.
set -u
for round in 1 2; do  # round 3: the same, run again at 07:25 (for round in 3)
  for side in base grpc17; do
    if [ $side = base ]; then W=/work/wt/grpc17-base; else W=/work/wt/grpc17; fi
    echo "$(date -u +%T) start $side round $round load $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd $W && .venv/bin/python bench/agent_memory.py --pods 100 --churn 0 --skip-load \
        --name g17${side:0:1}$round --label $side-r$round --out /tmp/grpc17-mem) \
        > /tmp/grpc17-mem/$side-r$round.log 2>&1
    echo "$(date -u +%T) end $side round $round rc $? load $(cut -d' ' -f1-3 /proc/loadavg)"
  done
done
