"""Which of the host's mounts a lab container binds back into its own root."""

from nodemesh.lab.container_init import top_mounts

# A test worker's view where /run is no mount of its own on the host: the host's lab mounted a
# node's netns directory under /run, then the worker put a tmpfs on /run over it.
MOUNTINFO = """\
20 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
21 20 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw
22 20 0:20 / /proc rw,nosuid,nodev,noexec shared:3 - proc proc rw
30 20 8:1 /run/nodemesh/other/nodes/node1/run/netns /run/nodemesh/other/nodes/node1/run/netns rw shared:40 - ext4 /dev/sda1 rw
31 20 0:50 / /run rw - tmpfs nodemesh-run rw
32 31 0:51 / /run/netns rw - tmpfs x rw
33 20 0:52 / /etc/hosts rw - ext4 /dev/sda1 rw
34 20 0:53 / /etc/hosts rw - ext4 /dev/sda1 rw
"""


def test_a_mount_covered_by_a_later_one_is_not_bound_back() -> None:
    # Before: the covered netns directory was listed, and opening it by its path failed
    # (ENOENT): the lab's agent could not start while another lab ran on the host.
    assert top_mounts(MOUNTINFO) == ["/dev", "/proc", "/run", "/etc/hosts"]


def test_the_mounts_right_under_the_root_in_mount_order() -> None:
    text = "\n".join(
        line for line in MOUNTINFO.splitlines() if not line.startswith(("30 ", "31 ", "32 "))
    )
    assert top_mounts(text) == ["/dev", "/proc", "/etc/hosts"]
