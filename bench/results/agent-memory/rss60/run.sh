#!/bin/bash
# usage: run.sh side round [extra args]
side=$1; round=$2; shift 2
case $side in base) W=/work/main;; prom) W=/work/wt/rss60-snap2;; *) W=/work/wt/rss60-snap;; esac
echo "$(date -u +%T) start $side r$round $(git -C $W rev-parse --short HEAD) load $(cut -d' ' -f1-3 /proc/loadavg)" >> /tmp/rss60/res/ab.log
(cd $W && .venv/bin/python bench/agent_memory.py --pods 100 --churn 0 --skip-load \
    --name r6${side:0:1}$round --label $side-r$round --out /tmp/rss60/res \
    --reports /tmp/rss60/res/reports-$side-r$round "$@") > /tmp/rss60/res/$side-r$round.log 2>&1
echo "$(date -u +%T) end $side r$round rc $? load $(cut -d' ' -f1-3 /proc/loadavg)" >> /tmp/rss60/res/ab.log
