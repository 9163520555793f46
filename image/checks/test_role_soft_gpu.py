"""The CPU stand-in for a GPU stack on a built tree: the ICDs are registered, the tools are there."""


def test_opencl_and_vulkan_on_the_cpu_are_installed(host):
    for pkg in ("pocl-opencl-icd", "mesa-vulkan-drivers", "clinfo", "vulkan-tools"):
        assert host.package(pkg).is_installed, pkg
    assert host.file("/etc/OpenCL/vendors/pocl.icd").exists
    assert host.file("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json").exists


def test_the_admin_is_in_the_device_groups(host, expect):
    for user in expect["soft_gpu_users"]:
        assert {"render", "video"} <= set(host.user(user).groups)
