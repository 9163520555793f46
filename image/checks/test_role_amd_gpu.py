"""The AMD GPU role on a built tree: Mesa RADV and rusticl, the admin in render and video; ROCm when on.
(Run only when an Ubuntu 24.04 image with the role is built: on the AMD cluster's control node.)"""


def test_vulkan_and_opencl_from_mesa(host):
    for pkg in ("mesa-vulkan-drivers", "mesa-opencl-icd", "clinfo", "vulkan-tools"):
        assert host.package(pkg).is_installed, pkg
    assert host.file("/etc/environment").contains("^RUSTICL_ENABLE=radeonsi$")


def test_the_admin_is_in_the_device_groups(host, expect):
    for user in expect["amd_gpu_users"]:
        assert {"render", "video"} <= set(host.user(user).groups)


def test_the_node_exporter_reads_amdgpu(host, expect):
    if expect.get("amd_gpu_metrics", True):
        drop_in = host.file("/etc/systemd/system/prometheus-node-exporter.service.d/onedotzero-amdgpu.conf")
        assert drop_in.contains("--collector.drm")
