"""Telemetry: the control node's Prometheus and what it scrapes (node exporters, the engine's /metrics), and the
series `cluster.py bench run` stores with a run.

  PROMETHEUS_PORT      the control node's Prometheus, on its cluster address (netboot/templates/etc/prometheus)
  NODE_EXPORTER_PORT   every node's exporter (playbooks/roles/node_exporter)
  SCRAPE_SECONDS       one scrape interval for every target: fine enough for a bench run's timeline, cheap enough
                       for the engine (benchmarks/bench_telemetry.py measures what it costs)
"""

PROMETHEUS_PORT = 9090
NODE_EXPORTER_PORT = 9100
SCRAPE_SECONDS = 2
