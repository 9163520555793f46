"""Performance analysis of the inference cluster (`cluster.py bench`): recorded runs and the bottleneck.

loadgen.py   AIPerf (pinned, its own venv): one load point against the control node's endpoint
probe.py     on the nodes: memory bandwidth, CPU and fabric counters, RPC round trips, llama-bench, image versions
run.py       the orchestrator of one run: context, probes, sweep, round trips, publish
results.py   the results folder: publish whole, list, resolve, compare
analysis.py  pure: a run's measurements against memory bandwidth, the link and compute; the binding constraint
report.py    pure: one HTML file with plots from stored runs
"""
