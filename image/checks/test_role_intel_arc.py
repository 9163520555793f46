"""The Intel Arc role on a built tree: the repository with its own key, the compute runtime, Vulkan, the DG2
firmware, the admin in render and video. (Run only when an Ubuntu image with the role is built: on the nuc.)"""


def test_repository_trusted_by_its_own_key_only(host):
    sources = host.run("ls /etc/apt/sources.list.d/*.sources").stdout.split()
    gpu = [s for s in sources if "intel-graphics" in s]
    assert gpu, sources
    text = host.file(gpu[0]).content_string
    key = next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("Signed-By: "))
    assert host.file(key).exists and key.startswith("/etc/apt/keyrings/")


def test_compute_runtime_vulkan_and_firmware(host):
    for pkg in ("intel-opencl-icd", "libze1", "mesa-vulkan-drivers", "clinfo"):
        assert host.package(pkg).is_installed, pkg
    for fw in ("dg2_guc_70.bin", "dg2_huc_gsc.bin", "dg2_dmc_ver2_08.bin"):
        assert host.run(f"ls /lib/firmware/i915/{fw}*").rc == 0, fw


def test_the_admin_is_in_the_device_groups(host, expect):
    for user in expect["intel_arc_users"]:
        assert {"render", "video"} <= set(host.user(user).groups)


def test_intel_gpu_top_feeds_the_node_exporter(host):
    assert host.package("intel-gpu-tools").is_installed
    assert host.file("/usr/local/libexec/onedotzero-gpu-metrics").mode & 0o111
    assert host.file("/etc/systemd/system/multi-user.target.wants/onedotzero-gpu-metrics.service").exists
    unit = host.file("/etc/systemd/system/onedotzero-gpu-metrics.service").content_string
    assert "intel_gpu_top -J" in unit
