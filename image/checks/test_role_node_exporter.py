"""The node exporter on a built tree: installed, enabled at boot, with the toolkit's collectors and port."""

import shlex


def test_the_node_exporter_is_installed_and_enabled(host):
    assert host.package("prometheus-node-exporter").is_installed
    assert host.file("/etc/systemd/system/multi-user.target.wants/prometheus-node-exporter.service").exists


def test_it_runs_the_toolkits_collectors_on_its_port(host, expect):
    text = host.file("/etc/default/prometheus-node-exporter").content_string
    line = next(x for x in text.splitlines() if x.startswith("ARGS="))
    args = shlex.split(line.removeprefix("ARGS="))[0].split()
    assert f"--web.listen-address=:{expect['node_exporter_port']}" in args
    assert "--collector.disable-defaults" in args
    # what `cluster.py bench` reads: CPU, the NICs' byte counters, memory, the GPU roles' textfiles
    assert {"--collector.cpu", "--collector.netdev", "--collector.meminfo", "--collector.textfile"} <= set(args)
    textfile = next(a for a in args if a.startswith("--collector.textfile.directory="))
    assert host.file(textfile.partition("=")[2]).is_directory


def test_the_binary_accepts_those_flags(host, expect):
    """An unknown flag (a collector this distribution's exporter lacks) would stop the unit at every boot."""
    text = host.file("/etc/default/prometheus-node-exporter").content_string
    args = shlex.split(next(x for x in text.splitlines() if x.startswith("ARGS=")).removeprefix("ARGS="))[0]
    out = host.run(f"/usr/bin/prometheus-node-exporter {args} --help")
    assert out.rc == 0, out.stderr
