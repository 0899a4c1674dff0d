#!/bin/bash
# rounds of the issue-20 setup: server pinned on CPU 0, the epoll generator on CPU 1
cd /work/main
PY=.venv/bin/python
for round in 1 2 3; do
  for srv in trio demo; do
    if [ $srv = trio ]; then
      taskset -c 0 $PY -m trio_agent serve --host 127.0.0.1 --port 18001 --mock-ttft 0 --mock-itl 0.01 --mock-tokens 64 --no-access-log --max-concurrency 5000 --max-queued 5000 > /tmp/q/srv.log 2>&1 &
    else
      taskset -c 0 $PY -m benchmarks.baseline_seed --port 18001 --mock-ttft 0 --mock-itl 0.01 --mock-tokens 64 > /tmp/q/srv.log 2>&1 &
    fi
    pid=$!
    for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18001/ && break; sleep 0.2; done
    for s in 100 1000; do
      echo "round=$round server=$srv streams=$s"
      timeout 120 taskset -c 1 $PY benchmarks/closed_loop_epoll.py --port 18001 --streams $s --server-pid $pid --label "$srv-$s-r$round"
    done
    kill -TERM $pid; wait $pid 2>/dev/null
  done
done
